// Helpers every binding file shares: boundary checks and kernel lookup by name.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "edgecompress/cpu.h"

namespace edgecompress::bindings {

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

inline bool contiguous(const pybind11::array& a) { return (a.flags() & pybind11::array::c_style) != 0; }

// The kernel of a family (listed by `list`, e.g. gemm_q4_kernels) called `name`, if it runs here.
template <class K>
const K& kernel_by_name(int (*list)(const K* const**), const std::string& name) {
  const K* const* ks;
  const int n = list(&ks);
  for (int i = 0; i < n; ++i) {
    if (name == ks[i]->name) {
      if (!cpu_has(ks[i]->needs)) throw std::invalid_argument("kernel " + name + " cannot run on this CPU");
      return *ks[i];
    }
  }
  throw std::invalid_argument("unknown kernel '" + name + "'");
}

}  // namespace edgecompress::bindings
