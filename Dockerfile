# TotalSegmentator (totalseg) as a container image, CPU or CUDA.
#
# CPU (default):
#   docker build -t totalseg .
#   docker run --rm -v /data:/tmp totalseg TotalSegmentator -i /tmp/ct.nii.gz -o /tmp/segmentations
# GPU (NVIDIA; the host needs the NVIDIA Container Toolkit):
#   docker build -t totalseg:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus 'device=0' --ipc=host -v /data:/tmp totalseg:cuda \
#       TotalSegmentator -i /tmp/ct.nii.gz -o /tmp/segmentations
#
# Build arguments:
#   BASE_IMAGE       any Debian/Ubuntu image; one without python3 (the CUDA runtime images) gets the
#                    distribution's python3 + venv. docker/build_base.sh makes one from Debian packages
#                    (no Docker Hub needed): totalseg-base:bookworm.
#   TORCH_SPEC       the torch requirement(s) installed before the package (default: the CPU release the
#                    project tests with, and the torchvision of that release).
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's CPU index; cu128 etc. for CUDA; empty: the
#                    ordinary pip indexes, e.g. PIP_FIND_LINKS pointing at a local wheel).
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST, PIP_CERT   passed to pip (mirrors,
#                    local wheels, a proxy's CA bundle).
#   TASKS            empty (default): no weights in the image, they come from the home volume (or are
#                    downloaded on first use). "total body ..." bakes those tasks' weights in at build time.
#   USER_ID          the uid (and gid) of the non-root user `totalseg` (default 1000).

ARG BASE_IMAGE=python:3.11-slim

# --- python3 with venv on the chosen base ------------------------------------------------------------
FROM ${BASE_IMAGE} AS python
RUN if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --- build: a venv with torch, then the package ----------------------------------------------------
FROM python AS build
ARG TORCH_SPEC="torch==2.13.0 torchvision==0.28.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install -q --upgrade pip
# torch first (as .ci/run does), so that no dependency pulls another build of it.
RUN pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_SPEC
WORKDIR /src
COPY pyproject.toml README.md ./
COPY totalseg ./totalseg
COPY totalsegmentator ./totalsegmentator
RUN pip install -q . && pip check \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && TotalSegmentator --help >/dev/null

# --- runtime: the venv, a non-root user, the weights home as a volume --------------------------------
FROM python AS runtime
ARG USER_ID=1000
# (A base that has a user with that uid, as Ubuntu 24.04's `ubuntu`, gives it up.)
RUN old="$(getent passwd "${USER_ID}" | cut -d: -f1)"; if [ -n "$old" ]; then userdel -r "$old" 2>/dev/null; fi; \
    old="$(getent group "${USER_ID}" | cut -d: -f1)"; if [ -n "$old" ]; then groupdel "$old"; fi; \
    groupadd --gid "${USER_ID}" totalseg \
    && useradd --create-home --uid "${USER_ID}" --gid "${USER_ID}" --shell /bin/sh totalseg
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TOTALSEG_HOME_DIR=/home/totalseg/.totalsegmentator \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER totalseg
ARG TASKS=""
# Weights only when asked: TASKS="total body" runs `totalseg_download_weights -t total -t body`.
RUN mkdir -p "$TOTALSEG_HOME_DIR" \
    && if [ -n "$TASKS" ]; then \
        set -- ; for t in $TASKS; do set -- "$@" -t "$t"; done; \
        totalseg_download_weights "$@"; \
    fi
VOLUME ["/home/totalseg/.totalsegmentator"]
WORKDIR /home/totalseg
# `docker run IMAGE TotalSegmentator -i ... -o ...` (or any other command: totalseg_info, ...);
# `docker run IMAGE -i ... -o ...` is TotalSegmentator too.
COPY docker/entrypoint.sh /usr/local/bin/totalseg-entrypoint
ENTRYPOINT ["/usr/local/bin/totalseg-entrypoint"]
CMD ["TotalSegmentator", "--help"]
