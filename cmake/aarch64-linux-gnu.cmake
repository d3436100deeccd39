# Cross-compiles for Linux/aarch64 with Debian's cross toolchain (g++-aarch64-linux-gnu):
#   cmake -S . -B /tmp/build-arm -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# Binaries run under qemu-user: qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max ./ec_kernel_tests
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Libraries and headers come from the target sysroot only; programs (cmake, python) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Lets ctest and try_run execute target binaries where qemu-user is installed.
find_program(EC_QEMU_AARCH64 qemu-aarch64)
if(EC_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EC_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
endif()
