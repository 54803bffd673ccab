"""Builds reidkern's native library (``reidkern._C``) through CMakeLists.txt with the ninja generator.

Environment variables:
  REIDKERN_WITH_CUDA   "1" force CUDA kernels on, "0" off; default: on when the installed torch has
                       CUDA and nvcc is found.
  REIDKERN_CUDA_ARCHS  CMake CUDA architectures, default "80;90" (sm_80 and sm_90).
  REIDKERN_BUILD_TYPE  CMake build type, default "Release".
  MAX_JOBS             parallel compile jobs for ninja.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    )


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def _drop_stale_cmake_cache(build_temp):
    """Removes a build folder whose CMake cache names a cmake or ninja that no longer exists.

    pip builds in a temporary environment that holds its own cmake and ninja and is deleted
    afterwards; a second ``pip install .`` of the same checkout would otherwise reuse the cache
    and fail with "ninja: no such file or directory"."""
    cache = build_temp / "CMakeCache.txt"
    if not cache.exists():
        return
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith(("CMAKE_MAKE_PROGRAM:", "CMAKE_COMMAND:")):
            tool = line.split("=", 1)[-1].strip()
            if tool and not Path(tool).exists():
                shutil.rmtree(build_temp)
                return


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11
        import torch

        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        _drop_stale_cmake_cache(build_temp)
        build_temp.mkdir(parents=True, exist_ok=True)

        nvcc = _find_nvcc()
        want = os.environ.get("REIDKERN_WITH_CUDA")
        with_cuda = (torch.version.cuda is not None and nvcc is not None) if want is None else want == "1"
        if with_cuda and nvcc is None:
            raise RuntimeError("REIDKERN_WITH_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        archs = os.environ.get("REIDKERN_CUDA_ARCHS", "80;90")
        cmake = shutil.which("cmake") or "cmake"
        args = [
            cmake, str(ROOT), "-G", "Ninja",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('REIDKERN_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DREIDKERN_TORCH_VERSION={torch.__version__}",
            f"-DREIDKERN_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        if with_cuda:
            args += [f"-DCMAKE_CUDA_ARCHITECTURES={archs}", f"-DCMAKE_CUDA_COMPILER={nvcc}"]
        print(f"reidkern: building CPU kernels{' and CUDA kernels for ' + archs if with_cuda else ''}")
        subprocess.run(args, cwd=build_temp, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run([cmake, "--build", ".", "-j", jobs], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("reidkern._C")], cmdclass={"build_ext": CMakeBuild})
