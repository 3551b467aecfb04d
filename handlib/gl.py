"""One headless OpenGL context per process (EGL: Mesa llvmpipe on a CPU, the GPU driver where there is one)."""

import functools

import moderngl

APT_PACKAGES = "libegl1 libgl1-mesa-dri libegl-mesa0"


@functools.cache
def get_context() -> moderngl.Context:
    """The shared EGL context; a clear error naming the system packages when none can be made."""
    try:
        return moderngl.create_context(standalone=True, backend="egl")
    except Exception as err:  # moderngl raises bare Exception for a missing libEGL or driver
        raise RuntimeError(
            f"cannot create a headless OpenGL (EGL) context: {err}. "
            f"Install the EGL and Mesa libraries: sudo apt-get install {APT_PACKAGES}"
        ) from err


def context_info() -> str:
    """Renderer and OpenGL version of the shared context, e.g. 'llvmpipe (LLVM 15.0.6, 256 bits), OpenGL 4.5'."""
    info = get_context().info
    return f"{info['GL_RENDERER']}, OpenGL {info['GL_VERSION']}"
