# A Layerswarm node (swarmnode serve), configured by /etc/layerswarm/node.toml; the token comes from the
# environment (SWARMNODE_TOKEN), never from the file baked into an image or the command line.
# UNTESTED here: these machines cannot run docker.
#
#   docker build -f deploy/node.Dockerfile -t layerswarm-node:cpu .                      # CPU: ONNX Runtime
#   docker build -f deploy/node.Dockerfile --build-arg VARIANT=gpu -t layerswarm-node:gpu .
#   docker run -d --restart on-failure -p 31337:31337 \
#       -v $PWD/node.toml:/etc/layerswarm/node.toml:ro -v swarmnode:/var/lib/swarmnode \
#       -e SWARMNODE_TOKEN=lsn_... layerswarm-node:cpu          # GPU: add --gpus all, use :gpu
#
# deploy/node.example.toml is a config to start from (keys are `swarmnode serve`'s long flag names).
FROM python:3.11-slim
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    LAYERSWARM_HOME=/var/lib/swarmnode OMP_WAIT_POLICY=PASSIVE
WORKDIR /opt/swarmnode
COPY requirements/node.txt requirements/node.txt
# cpu: torch's CPU-only build (no 2 GB of CUDA libraries); gpu: PyPI's default Linux torch, which brings its
# own CUDA runtime (the host needs only the NVIDIA driver and the container toolkit: `docker run --gpus all`).
RUN case "$VARIANT" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu "$(grep '^torch==' requirements/node.txt)" ;; \
      gpu) ;; \
      *) echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1 ;; \
    esac \
 && pip install -r requirements/node.txt
COPY pyproject.toml README.md ./
COPY swarmnode/ swarmnode/
RUN pip install --no-deps . \
 && useradd --system --home-dir /var/lib/swarmnode --create-home swarmnode \
 && mkdir -p /etc/layerswarm
COPY deploy/node.example.toml /etc/layerswarm/node.toml
USER swarmnode
VOLUME /var/lib/swarmnode
EXPOSE 31337
# SIGINT lets the node tell the portal it is leaving; `docker stop` sends it.
STOPSIGNAL SIGINT
ENTRYPOINT ["swarmnode"]
CMD ["serve", "--config", "/etc/layerswarm/node.toml"]
