"""File-backed IPAM shared by the CNI plugin, the `pybridge-ipam` executable and the Docker IPAM driver.

config.py parses the host-local style `ipam` section; store.py keeps leases on disk (format
documented there); pool.py finds free addresses quickly; fsutil.py holds the crash-safe write and
locking primitives; plugin.py is the CNI IPAM command logic.
"""
