// The executorch wheel's headers include <torch/headeronly/macros/Macros.h>, which includes this
// build-time configuration header; the wheel does not ship it. The runner needs only the choice
// below (shared libraries, no glog/gflags/NUMA), so it is written here instead of depending on torch.
#ifndef MOBILEVITS_SHIM_CMAKE_MACROS_H_
#define MOBILEVITS_SHIM_CMAKE_MACROS_H_
#define C10_BUILD_SHARED_LIBS
#endif
