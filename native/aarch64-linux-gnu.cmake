# Cross-build tvmsplit-worker for aarch64 with Debian's g++-aarch64-linux-gnu, against the
# testbed's arm64 sysroot (`python -m tvmsplit.testbed sysroot` prints its "path"): it holds the
# aarch64 apache-tvm wheel (opt/tvmsplit-site) and arm64 libzmq, libsodium, cppzmq, nlohmann-json.
#
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=native/aarch64-linux-gnu.cmake \
#         -DTVMSPLIT_SYSROOT=<sysroot path> && cmake --build build/aarch64 -j2
#   qemu-aarch64-static -L <sysroot path> build/aarch64/tvmsplit-worker --bundle ... --stage 0
#
# The binary finds TVM's libraries at /opt/tvmsplit-site/... (its RPATH), where they are on the
# device (and in the sysroot, which qemu -L makes the device's root).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

if(NOT TVMSPLIT_SYSROOT AND DEFINED ENV{TVMSPLIT_SYSROOT})
  set(TVMSPLIT_SYSROOT "$ENV{TVMSPLIT_SYSROOT}")
endif()
if(NOT TVMSPLIT_SYSROOT)
  message(FATAL_ERROR "give -DTVMSPLIT_SYSROOT=<the testbed's arm64 sysroot> "
                      "(python -m tvmsplit.testbed sysroot prints it)")
endif()
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES TVMSPLIT_SYSROOT)

set(CMAKE_SYSROOT "${TVMSPLIT_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH "${TVMSPLIT_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${TVMSPLIT_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${TVMSPLIT_SYSROOT}/usr/lib/aarch64-linux-gnu/pkgconfig:${TVMSPLIT_SYSROOT}/usr/share/pkgconfig")

set(TVM_ROOT "${TVMSPLIT_SYSROOT}/opt/tvmsplit-site/tvm" CACHE PATH "" FORCE)
set(TVM_FFI_ROOT "${TVMSPLIT_SYSROOT}/opt/tvmsplit-site/tvm_ffi" CACHE PATH "" FORCE)
set(TVMSPLIT_RPATH "/opt/tvmsplit-site/tvm/lib;/opt/tvmsplit-site/tvm_ffi/lib" CACHE STRING "" FORCE)
