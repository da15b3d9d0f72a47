# yolodist for GPU jobs: train.py, val.py, detect.py and export.py ready in /app, as upstream's image.
#   docker build -t yolodist .
#   docker run --gpus all --ipc=host --rm -it -v "$PWD/datasets:/app/datasets" -v "$PWD/runs:/app/runs" \
#     yolodist python -m torch.distributed.run --nproc_per_node 8 train.py --data my.yaml --weights yolov5s.pt
# --ipc=host (or a large --shm-size): dataloader workers and the --cache ram image cache live in /dev/shm,
# which is 64 MB in a container by default.
FROM python:3.11-slim-bookworm

# PyPI's Linux torch wheels are CUDA builds that bring their own CUDA and cuDNN libraries; the host
# needs only the NVIDIA driver and container toolkit (--gpus all).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in a layer of their own: a source change does not reinstall torch.
COPY pyproject.toml constraints.txt README.md ./
COPY yolodist/__init__.py yolodist/__init__.py
RUN pip install -c constraints.txt ".[export,coco,tensorboard]" && pip uninstall -y yolodist

COPY yolodist ./yolodist
COPY train.py val.py detect.py export.py ./
RUN pip install --no-deps -c constraints.txt . \
    && python -c "import cv2, torch, torchvision, yolodist; print('yolodist', yolodist.__version__, 'torch', torch.__version__)"

# Checkpoints land in /app/runs: mount it (see above) so that they outlive the container.
VOLUME ["/app/runs"]
CMD ["python", "train.py", "--help"]
