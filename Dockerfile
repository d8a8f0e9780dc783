# pybridge Docker network + IPAM driver (`cni-bridge serve`) as a container.
#
# No registry is needed: make the base image and the wheelhouse first (offline from the host's
# Debian mirror and pip configuration), then build:
#   plugin-spec/make-base-image.sh                       # pybridge-base:bookworm + build/wheels/
#   docker build -t pybridge:latest .                    # (--build-arg BASE=... for another base)
# Run it on the host's network with the plugin socket directory and the state shared:
#   docker run -d --name pybridge --restart always --network host --privileged \
#     -v /run/docker/plugins:/run/docker/plugins \
#     -v /var/lib/cni-bridge:/var/lib/cni-bridge -v /var/lib/cni/pybridge:/var/lib/cni/pybridge \
#     -v /run/cni-bridge:/run/cni-bridge pybridge:latest
# Arguments after the image are passed to `cni-bridge serve` (see `cni-bridge serve --help`).
# The base needs python3 (>= 3.11) with venv, nftables (libnftables) and iptables.
ARG BASE=pybridge-base:bookworm
FROM ${BASE}

COPY build/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/cni-bridge \
 && /opt/cni-bridge/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels cni-bridge \
 && rm -rf /tmp/wheels \
 && /opt/cni-bridge/bin/cni-bridge --help >/dev/null

ENV PATH=/opt/cni-bridge/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="pybridge" \
      org.opencontainers.image.description="pybridge Docker network and IPAM driver (cni-bridge serve)"
# Docker discovers the driver by its socket in /run/docker/plugins; driver state and the lease
# store must outlive the container.
VOLUME ["/run/docker/plugins", "/var/lib/cni-bridge", "/var/lib/cni/pybridge", "/run/cni-bridge"]
ENTRYPOINT ["cni-bridge", "serve"]
CMD []
