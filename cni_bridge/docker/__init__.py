"""Docker front end: libnetwork remote NetworkDriver + IpamDriver `pybridge`.

app.py (Flask app, routing, error contract), network.py and ipam.py (handlers), options.py
(`-o` options -> config keys), body.py (typed request fields), context.py (settings), server.py
(gunicorn on /run/docker/plugins/pybridge.sock). Persistent state: cni_bridge/state.py.
"""
