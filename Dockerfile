# gradserve: the gRPC gradient server with the standard ops.
#   docker build -t gradserve .
#   docker build -t gradserve --build-arg EXTRA_OPS="gradserve-ops-special==1.0" .
# Two stages: the build stage resolves the workspace from uv.lock (--frozen: the lock is used
# as committed, never re-resolved) into /opt/venv; the runtime stage copies only that venv.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# Third-party dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
COPY protos/pyproject.toml protos/
COPY ops_plugins/core/pyproject.toml ops_plugins/core/
COPY server/pyproject.toml server/
COPY client/pyproject.toml client/
RUN uv sync --frozen --no-dev --package gradserve-server --no-install-workspace
COPY protos/ protos/
COPY ops_plugins/core/ ops_plugins/core/
COPY server/ server/
RUN uv sync --frozen --no-dev --package gradserve-server --no-editable
# Extra op plugins, by pip requirement, installed beside the core ops (space-separated).
ARG EXTRA_OPS=""
RUN if [ -n "$EXTRA_OPS" ]; then uv pip install --python /opt/venv/bin/python $EXTRA_OPS; fi

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gradserve
COPY --from=build /opt/venv /opt/venv
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
