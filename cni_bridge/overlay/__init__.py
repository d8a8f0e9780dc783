"""Peers of vxlan networks that span hosts without multicast (Neutron l2population style).

* `peers.py`: pure diffing. Desired state (the remote endpoints of a VNI: MAC, IPs, VTEP) ->
  the FDB and neighbour entries the vxlan device must have -> what to add and what to remove.
* `reconcile.py`: `reconcile(vni, endpoints)` reads the device's entries from the kernel and
  applies that plan: desired state in, kernel in step.
* `registry.py`: what this host would publish: its VTEP and its attachments (MAC, IPs) per
  VNI, recorded on ADD and removed on DEL; the one place a distributor reads from.
"""
