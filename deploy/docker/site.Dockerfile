# securefed site image: the installed securefed a site runs (`securefed site supernode`).
# Build (where the network is allowed; the image then runs offline):
#   docker build -f deploy/docker/site.Dockerfile -t securefed-site .
# Run (the site's data read-only, its state and keys mounted; nothing is downloaded at run time):
#   docker run --rm --network host \
#     -v /data/fets:/data:ro -v /srv/securefed:/srv/securefed -v /etc/securefed:/etc/securefed:ro \
#     securefed-site site supernode /etc/securefed/protocol.toml \
#       --site-config /etc/securefed/site-7.toml --superlink fl.coordinator.example.org:9093 \
#       --ca-cert /etc/securefed/ca.pem --node-key /etc/securefed/node/node.key \
#       --data-dir /data --work-dir /srv/securefed --assignments /srv/securefed/clusters.csv
# Offline install instead of a network build: on a connected machine
#   pip download -d wheelhouse -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu .
# then copy wheelhouse/ and install with `pip install --no-index --find-links wheelhouse -c constraints.txt .`
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

RUN useradd --system --create-home --uid 10001 securefed
WORKDIR /opt/securefed
COPY pyproject.toml constraints.txt README.md ./
COPY securefed ./securefed
# torch: the CPU build of the pinned version (constraints.txt); a GPU site swaps the index URL.
RUN python -m venv /opt/securefed/.venv \
 && /opt/securefed/.venv/bin/pip install --upgrade pip \
 && /opt/securefed/.venv/bin/pip install -c constraints.txt \
      --extra-index-url https://download.pytorch.org/whl/cpu . \
 && /opt/securefed/.venv/bin/securefed --version

USER securefed
ENV PATH=/opt/securefed/.venv/bin:$PATH
ENTRYPOINT ["securefed"]
CMD ["--help"]
