"""cuda_toolkit, Debian 12 distro source: the real CUDA 11.8 toolkit, held, with its login environment."""

import re
import shlex


def test_toolkit_installed_and_held(host):
    package = host.package("nvidia-cuda-toolkit")
    assert package.is_installed
    assert package.version.startswith("11.8.")
    selection = host.check_output("dpkg --get-selections nvidia-cuda-toolkit").split()
    assert selection == ["nvidia-cuda-toolkit", "hold"]


def test_nvcc_reports_cuda_11_8(host):
    banner = host.check_output("/usr/bin/nvcc --version")
    assert re.search(r"release 11\.8, V11\.8\.\d+", banner)


def test_login_shell_gets_cuda_home(host):
    profile = host.file("/etc/profile.d/cuda.sh")
    assert profile.mode == 0o644
    assert host.check_output("bash -lc 'echo $CUDA_HOME'") == "/usr/lib/nvidia-cuda-toolkit"
    assert host.file("/usr/lib/nvidia-cuda-toolkit/bin/nvcc").exists
    path = host.check_output("bash -lc 'echo $PATH'").split(":")
    assert path[0] == "/usr/lib/nvidia-cuda-toolkit/bin"


def test_nvcc_compiles_a_kernel_to_ptx(host):
    # No GPU is needed to compile: this shows the toolkit (compiler, headers, host compiler) works.
    source = "__global__ void scale(float *x, float a) { x[threadIdx.x] *= a; }"
    host.run_expect([0], "mkdir -p /root/cuda-check")
    host.run_expect([0], f"printf '%s\\n' {shlex.quote(source)} > /root/cuda-check/scale.cu")
    # A login shell: /etc/profile.d/cuda.sh puts the toolkit's bin directory, with Debian's wrapper
    # that picks the supported gcc-11, on PATH. Without it nvcc finds no host compiler.
    result = host.run("bash -lc 'cd /root/cuda-check && nvcc --ptx -o scale.ptx scale.cu'")
    assert result.rc == 0, result.stderr
    assert re.search(r"\.visible \.entry _Z5scalePff", host.file("/root/cuda-check/scale.ptx").content_string)
