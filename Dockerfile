# syntax=docker/dockerfile:1
# gradserve: the gRPC gradient server with the standard ops.
#   docker build -t gradserve .
#   docker build -t gradserve --build-arg EXTRA_OPS="gradserve-ops-special==1.0" .
# Two stages. The build stage builds the server's wheels (gradserve-protos, gradserve-ops-core,
# gradserve-server) and writes the lock's pins of their dependencies (uv export --frozen: the
# lock as committed, never re-resolved). The runtime stage installs those wheels, pinned so,
# into /opt/venv with pip; it holds no uv, no build tools and no source tree.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY client/pyproject.toml client/
COPY protos/ protos/
COPY ops_plugins/core/ ops_plugins/core/
COPY server/ server/
RUN for project in protos ops_plugins/core server; do \
        uv build --wheel --out-dir /wheels "$project" || exit 1; \
    done \
    && uv export --frozen --no-dev --package gradserve-server --no-emit-workspace \
        --no-hashes --output-file /wheels/requirements.txt

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gradserve
# Extra op plugins, by pip requirement, installed beside the core ops (space-separated).
ARG EXTRA_OPS=""
# The wheels are mounted from the build stage, not copied: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --find-links /wheels \
        --constraint /wheels/requirements.txt /wheels/gradserve_*.whl $EXTRA_OPS
# In a container the server must listen on all interfaces; the host decides what to publish.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRADSERVE_HOST=0.0.0.0 \
    GRADSERVE_PORT=50051
USER 10001
EXPOSE 50051
# Through sh so that the probe follows GRADSERVE_PORT when it is changed at run time.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["sh", "-c", "gradserve health --target 127.0.0.1:$GRADSERVE_PORT --timeout 3"]
ENTRYPOINT ["gradserve"]
CMD ["serve"]
