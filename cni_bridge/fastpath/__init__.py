"""The CNI fast path: the exec'd `pybridge` / `pybridge-ipam` forward each request to a warm local
daemon over a unix socket, so that no exec pays for importing pyroute2 (~140 ms).

`client` is imported by the exec'd plugin and uses only cheap standard-library modules (not even
`socket` or `json`, which cost ~11 ms and ~6 ms to import); `server` is the daemon side.
Kept import-free: importing the package must not pull in either side.
"""
