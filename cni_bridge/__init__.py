"""pybridge: a Linux bridge / macvlan / ipvlan / vlan container network plugin.

Kept import-free on purpose: the exec'd CNI client imports this package and must stay
on the standard library so that it starts in ~10 ms.
"""

__version__ = "0.1.0"
