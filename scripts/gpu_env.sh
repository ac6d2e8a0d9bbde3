# Sourced by the device scripts (gpu_check.sh, gpu_profile.sh, gpu_tune.sh, gpu_session.sh):
# the CUDA build's variables (sm_90 only, 16 jobs, the toolkit root) and the script's clock.
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
