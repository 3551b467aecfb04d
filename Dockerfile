# JupyterLab on handlib. CUDA is used when the host has it: `docker run --gpus all -p 8888:8888 handlib`
# (torch's wheels carry the CUDA runtime; the host needs only the NVIDIA driver and container toolkit).
FROM python:3.11-slim

# Headless OpenGL through EGL: Mesa's llvmpipe on a CPU, the NVIDIA driver's EGL when the host provides it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libegl1 libgl1-mesa-dri libegl-mesa0 libglib2.0-0 make \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics

WORKDIR /handlib
COPY requirements.txt requirements-mediapipe.tx[t] ./
RUN pip install --no-cache-dir -r requirements.txt \
    && if [ -f requirements-mediapipe.txt ]; then pip install --no-cache-dir --no-deps -r requirements-mediapipe.txt; fi
COPY . .
RUN pip install --no-cache-dir --no-deps -e .

EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root", "--notebook-dir=/handlib"]
