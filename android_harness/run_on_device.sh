#!/usr/bin/env bash
# Run a zoodip personalization on an Android phone (Termux, reached through adb) or on any ARM64
# Linux machine over ssh, and bring back the embedding, the log, peak memory and step times.
#
#   android_harness/run_on_device.sh --adb  [--serial S] [--user U] --model EXPORT --photos DIR [options] [-- personalize flags]
#   android_harness/run_on_device.sh --ssh [USER@]HOST [--port P]   --model EXPORT --photos DIR [options] [-- personalize flags]
#
# Options:
#   --dry-run            print every command instead of running it (needs neither adb nor ssh)
#   --out DIR            local folder for what comes back (default: device_out/RUN)
#   --run NAME           run name; the device keeps it in REMOTE_DIR/runs/NAME (default: run)
#   --remote-dir DIR     working folder on the device, relative to its home (default: zoodip-run)
#   --setup MODE         install the SDK's dependencies first: venv (ARM64 glibc Linux, incl. Debian
#                        in Termux's proot-distro: python3 -m venv + pip wheels from PyPI), termux
#                        (Termux packages, see README: partly unverified), none (default)
#   --python PATH        Python on the device, one program path taken as it is (no arguments; '~/' is its home;
#                        default: REMOTE_DIR/venv/bin/python after --setup venv, else python3)
#   --steps N            --max_train_steps (default: the CLI's)
#   --resume             continue the run NAME from its checkpoint (after a cancel or an OS kill)
#   --fetch              only bring back the results of run NAME (e.g. after the connection dropped)
#   --port P             ssh port (adb mode: the local end of 'adb forward', default 8022, Termux's sshd)
#
# adb mode: Termux's sshd (port 8022 in the phone) is forwarded to localhost with 'adb forward';
# every other step is ssh/tar, so both modes do the same thing. What comes back (in --out):
# learned_embeds.safetensors, log.jsonl, progress.jsonl, config.json, stdout.log, stderr.log and
# run.json = {exit_code, finished, peak_rss_mb (VmHWM), wall_s, step_s_median, step_s[]}.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

DRY=0; MODE=""; SERIAL=""; HOST=""; PORT=""; USER_NAME=""; MODEL=""; PHOTOS=""; OUT=""; RUN="run"
REMOTE_DIR="zoodip-run"; SETUP="none"; PY=""; STEPS=""; RESUME=0; FETCH=0; EXTRA=()

die() { echo "error: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --adb) MODE=adb; shift ;;
    --ssh) need_arg "$@"; MODE=ssh; HOST="$2"; shift 2 ;;
    --serial) need_arg "$@"; SERIAL="$2"; shift 2 ;;
    --port) need_arg "$@"; PORT="$2"; shift 2 ;;
    --user) need_arg "$@"; USER_NAME="$2"; shift 2 ;;
    --model) need_arg "$@"; MODEL="$2"; shift 2 ;;
    --photos) need_arg "$@"; PHOTOS="$2"; shift 2 ;;
    --out) need_arg "$@"; OUT="$2"; shift 2 ;;
    --run) need_arg "$@"; RUN="$2"; shift 2 ;;
    --remote-dir) need_arg "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --setup) need_arg "$@"; SETUP="$2"; shift 2 ;;
    --python) need_arg "$@"; PY="$2"; shift 2 ;;
    --steps) need_arg "$@"; STEPS="$2"; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --fetch) FETCH=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;  # the header
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -n "$MODE" ] || die "choose --adb (Android + Termux) or --ssh [USER@]HOST (ARM64 Linux)"
[ -n "$MODEL" ] || die "--model EXPORT_DIR is required (a zoodip export folder, .onnx or .ort graphs)"
[ -n "$PHOTOS" ] || die "--photos DIR is required (3-10 photos of the concept)"
[ -f "$MODEL/manifest.json" ] || die "$MODEL has no manifest.json: it is not a zoodip export (run 'zoodip export')"
[ -d "$PHOTOS" ] || die "photo folder $PHOTOS does not exist"
case "$SETUP" in venv|termux|none) ;; *) die "--setup must be venv, termux or none" ;; esac
case "$RUN" in *[!A-Za-z0-9._-]*|"") die "--run must be letters, digits, '.', '_' or '-'" ;; esac
[ -n "$STEPS" ] && { [[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a whole number from 1"; }
[ -n "$PORT" ] && { [[ "$PORT" =~ ^[1-9][0-9]{0,4}$ ]] && [ "$PORT" -le 65535 ] || die "--port must be a port number (1-65535)"; }
case "$REMOTE_DIR" in
  ""|-*) die "--remote-dir must name a folder on the device (not empty, not starting with '-')" ;;
  "~"*) die "--remote-dir is relative to the device's home already: drop the '~/' (or give an absolute path)" ;;
esac
if ! [ "$DRY" = 1 ]; then
  command -v ssh >/dev/null || die "ssh is not installed on this machine"
  [ "$MODE" = adb ] && { command -v adb >/dev/null || die "adb is not installed (Android platform-tools)"; }
fi

MODEL="$(cd "$MODEL" && pwd)"; PHOTOS="$(cd "$PHOTOS" && pwd)"
MODEL_NAME="$(basename "$MODEL")"
OUT="${OUT:-device_out/$RUN}"
R="$REMOTE_DIR"
RUN_DIR="$R/runs/$RUN"

ADB=(adb); [ -n "$SERIAL" ] && ADB=(adb -s "$SERIAL")
if [ "$MODE" = adb ]; then
  PORT="${PORT:-8022}"
  TARGET="${USER_NAME:+$USER_NAME@}127.0.0.1"
else
  PORT="${PORT:-22}"
  TARGET="$HOST"
fi
SSH=(ssh -p "$PORT" -o BatchMode=yes -o ServerAliveInterval=30 "$TARGET")

sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # single-quote one word
q() {                                      # shell-quote a command line, quoting only the words that need it
  local out="" w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$w "; else out+="$(sq "$w") "; fi
  done
  printf '%s' "${out% }"
}
run() {                                    # run (or, with --dry-run, print) one shell command line
  echo "+ $1"
  [ "$DRY" = 1 ] || bash -c "$1"
}
remote() { printf '%s %s' "$(q "${SSH[@]}")" "$(sq "$1")"; }   # the command line that runs $1 on the device
# The device-side words of the commands below, quoted where they need it (a folder named "my model").
RQ="$(q "$R")"; RUNQ="$(q "$RUN_DIR")"; MQ="$(q "$MODEL_NAME")"
# --python is one program path (a folder named "my env" or a name holding ';' must stay one word on the device),
# so it is quoted whole; only a leading '~/' is left for the device's shell to expand to its home.
if [ -z "$PY" ]; then
  if [ "$SETUP" = venv ]; then PY="$RQ/venv/bin/python"; else PY="python3"; fi
elif [[ "$PY" == "~/"* ]]; then
  PY="~/$(q "${PY#\~/}")"
else
  PY="$(q "$PY")"
fi

# 1. reach the device
if [ "$MODE" = adb ]; then
  run "$(q "${ADB[@]}" get-state)"
  run "$(q "${ADB[@]}" shell getprop ro.product.cpu.abi)   # expect arm64-v8a"
  run "$(q "${ADB[@]}" forward "tcp:$PORT" tcp:8022)   # Termux: pkg install openssh && sshd"
fi
run "$(remote "uname -m && mkdir -p $RQ/sdk $RQ/models $RUNQ")"

if [ "$FETCH" = 0 ]; then
# 2. push the SDK, the runner, the photos and (if the device lacks it) the export
run "tar -C $(q "$REPO/sdk") --exclude=__pycache__ -cf - zoodip | $(remote "rm -rf $RQ/sdk/zoodip && tar -C $RQ/sdk -xf -")"
run "tar -C $(q "$HERE") -cf - device_run.py | $(remote "tar -C $RQ -xf -")"
run "tar -C $(q "$PHOTOS") -cf - . | $(remote "rm -rf $RUNQ/photos && mkdir -p $RUNQ/photos && tar -C $RUNQ/photos -xf -")"
run "$(remote "cat $RQ/models/$MQ/manifest.json 2>/dev/null") | cmp -s - $(q "$MODEL/manifest.json") || { tar -C $(q "$(dirname "$MODEL")") -cf - $(q "./$MODEL_NAME") | $(remote "rm -rf $RQ/models/$MQ && tar -C $RQ/models -xf -"); }"

# 3. dependencies (numpy, onnxruntime, pillow, tqdm; never torch)
case "$SETUP" in
  venv) run "$(remote "python3 -m venv $RQ/venv && $RQ/venv/bin/pip install -q numpy onnxruntime pillow tqdm")" ;;
  termux) run "$(remote "pkg install -y python python-numpy python-pillow && pip install tqdm && { python -c 'import onnxruntime' 2>/dev/null || pkg install -y python-onnxruntime; }")" ;;
esac
run "$(remote "PYTHONPATH=$RQ/sdk $PY -c 'import numpy, onnxruntime, PIL, tqdm, zoodip; print(\"onnxruntime\", onnxruntime.__version__)'")"

# 4. the run: nohup so a dropped connection does not stop it; the exit code lands in a file
ARGS=(personalize --model "$R/models/$MODEL_NAME" --train_data_dir "$RUN_DIR/photos" --output_dir "$RUN_DIR" --no-progress)
[ -n "$STEPS" ] && ARGS+=(--max_train_steps "$STEPS")
[ "$RESUME" = 1 ] && ARGS+=(--resume)
ARGS+=("${EXTRA[@]}")
INNER="{ command -v termux-wake-lock >/dev/null && termux-wake-lock || true; }; PYTHONPATH=$RQ/sdk nohup $PY $RQ/device_run.py --summary $RUNQ/run.json -- $(q "${ARGS[@]}") > $RUNQ/stdout.log 2> $RUNQ/stderr.log; echo \$? > $RUNQ/exit_code"
run "$(remote "$INNER") || true"
fi

# 5. bring back the results
run "mkdir -p $(q "$OUT")"
run "$(remote "cd $RUNQ && tar -cf - \$(ls learned_embeds.safetensors log.jsonl progress.jsonl config.json run.json stdout.log stderr.log exit_code 2>/dev/null)") | tar -C $(q "$OUT") -xf -"

if [ "$DRY" = 1 ]; then
  echo "(dry run: nothing was executed)"
  exit 0
fi
CODE="$(cat "$OUT/exit_code" 2>/dev/null || echo unknown)"
echo "exit code on the device: $CODE; results in $OUT"
[ -f "$OUT/run.json" ] && python3 - "$OUT/run.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print(f"peak memory (VmHWM) {r.get('peak_rss_mb')} MB, median step {r.get('step_s_median')} s over "
      f"{r.get('steps_timed')} steps, wall {r.get('wall_s')} s, finished: {r.get('finished')}")
PY
case "$CODE" in
  0) ;;
  130) echo "the run was interrupted; continue it with: $0 ... --run $RUN --resume" >&2; exit 130 ;;
  2) echo "zoodip reported an error: see $OUT/stderr.log" >&2; exit 2 ;;
  *) echo "the process ended with $CODE (137/unknown = killed, e.g. by the low-memory killer): continue from the last checkpoint with --run $RUN --resume; see android_harness/README.md" >&2; exit 1 ;;
esac
