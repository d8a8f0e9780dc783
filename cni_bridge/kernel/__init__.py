"""The kernel layer: the only package that imports pyroute2 or ctypes or opens raw netlink
sockets (enforced by ruff's banned-api rule in pyproject.toml).

    nlsock      a raw netlink socket, attribute encoding, the datagram parser, NetlinkError
    rtnl        the raw rtnetlink requests of the hot path (links, veth, addresses, routes, netconf)
    netns       entering a network namespace from one thread (setns), NetnsGone
    handle      the sockets of one namespace: the raw rtnetlink socket and, on first use, pyroute2
    links       links: bridges, veth pairs, child links, moving, details
    addresses   interface addresses
    routes      main-table routes
    sysctl      sysctls and the netconf forwarding check
    tuntap      persistent tap devices (/dev/net/tun ioctls) and what rtnetlink says about them
    tc          traffic control: ifb devices, tbf qdiscs, the ingress redirect (to an ifb, or between a tap and a veth)
    netlink     `Netlink`, one handle per namespace (links + addresses + routes + sysctls + tc):
                root() for the host, netns(path) for a container
    nft         nftables scripts through libnftables (ctypes), else the `nft` executable
    nfnetlink   raw nfnetlink on pooled sockets: batches, keyed reads, table removal, set elements
    nfrules     the rules of a chain (list, insert, delete by handle): the FORWARD accepts
    nfobjects   tables, sets, elements, chains and rules as messages for one creating batch
    iptables    running iptables / ip6tables
    libc        the libc calls Python has no binding for (setns, mallopt, prctl)

What the rules *mean* (tables, sets, FORWARD accepts) is policy and lives in cni_bridge.firewall.
"""
