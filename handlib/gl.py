"""One headless OpenGL context per process (EGL: Mesa llvmpipe on a CPU, the GPU driver where there is one)."""

import ctypes.util
import functools
import glob
import importlib
import importlib.util
import os

import moderngl

APT_PACKAGES = "libegl1 libgl1-mesa-dri libegl-mesa0"


def missing_packages(find_library=None, glob_=None) -> list[str]:
    """The Debian/Ubuntu packages of APT_PACKAGES whose files are absent here (EGL loader, Mesa EGL, DRI driver)."""
    find_library, glob_ = find_library or ctypes.util.find_library, glob_ or glob.glob
    missing = [] if find_library("EGL") else ["libegl1"]
    vendors = glob_("/usr/share/glvnd/egl_vendor.d/*.json") + glob_("/etc/glvnd/egl_vendor.d/*.json")
    if not vendors:
        missing.append("libegl-mesa0")
    if not glob_("/usr/lib/*/dri/swrast_dri.so") + glob_("/usr/lib*/dri/swrast_dri.so"):
        missing.append("libgl1-mesa-dri")
    return missing


@functools.cache
def get_context() -> moderngl.Context:
    """The shared EGL context; a clear error naming the system packages when none can be made."""
    # triton (loaded by torch's first optimizer step, through torch._dynamo) segfaults when its LLVM loads after
    # llvmpipe's; loaded first, both work
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")
    try:
        ctx = moderngl.create_context(standalone=True, backend="egl")
    except Exception as err:  # moderngl raises bare Exception for a missing libEGL or driver
        missing = missing_packages()
        what = f"missing system package(s): {' '.join(missing)}. " if missing else ""
        raise RuntimeError(
            f"cannot create a headless OpenGL (EGL) context: {err}. {what}"
            f"Install the EGL and Mesa libraries: sudo apt-get install {' '.join(missing) or APT_PACKAGES}"
        ) from err
    ctx.extra = {"pid": os.getpid()}  # a forked child cannot use it (llvmpipe's threads stay in the parent)
    return ctx


def context_info() -> str:
    """Renderer and OpenGL version of the shared context, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits), OpenGL 4.5'."""
    info = get_context().info
    return f"{info['GL_RENDERER']}, OpenGL {info['GL_VERSION']}"
