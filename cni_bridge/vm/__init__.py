"""VM ports: tap devices on pybridge networks for VMs on this host (`cni-bridge vm`)."""
