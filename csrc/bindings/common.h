// Helpers every binding file shares: boundary checks and kernel lookup by name.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <climits>
#include <new>
#include <stdexcept>
#include <string>

#include "edgecompress/cpu.h"
#include "edgecompress/driver.h"
#include "edgecompress/isa.h"
#include "edgecompress/registry.h"

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

// The float32 arrays of a linear call, checked: x (M, K), optional bias (N,), and y (M, N): `out`
// when given, else a new array. Raises ValueError/TypeError on anything else.
struct LinearArrays {
  const float* x;
  const float* bias;
  pybind11::array y;
  int m;
};

inline LinearArrays linear_arrays(const pybind11::array& x, int k, int n, const pybind11::object& bias, int act,
                                  const pybind11::object& out) {
  namespace py = pybind11;
  require(py::isinstance<py::array_t<float>>(x) && x.ndim() == 2 && contiguous(x), "x: expected float32 (M, K) C-contiguous");
  require(x.shape(1) == k, "x: expected " + std::to_string(k) + " columns");
  require(x.shape(0) <= INT32_MAX, "x: too many rows");
  require(act >= 0 && act <= static_cast<int>(Activation::gelu), "activation: out of range");
  LinearArrays a{static_cast<const float*>(x.data()), nullptr, py::array(), static_cast<int>(x.shape(0))};
  if (!bias.is_none()) {
    const auto b = py::reinterpret_borrow<py::array>(bias);
    require(py::isinstance<py::array_t<float>>(bias) && b.ndim() == 1 && b.shape(0) == n && contiguous(b),
            "bias: expected float32 (" + std::to_string(n) + ",) contiguous");
    a.bias = static_cast<const float*>(b.data());
  }
  if (out.is_none()) {
    a.y = py::array_t<float>({static_cast<py::ssize_t>(a.m), static_cast<py::ssize_t>(n)});
  } else {
    a.y = py::reinterpret_borrow<py::array>(out);
    require(py::isinstance<py::array_t<float>>(out) && a.y.ndim() == 2 && contiguous(a.y) && a.y.shape(0) == a.m &&
                a.y.shape(1) == n && a.y.writeable(),
            "out: expected a writeable (M, N) float32 array");
  }
  return a;
}

// Raises for a status other than ok (after the GIL is taken back).
inline void raise_for(GemmStatus status) {
  if (status == GemmStatus::nonfinite_input) throw std::invalid_argument("x: expected finite values, got NaN or Inf");
  if (status == GemmStatus::out_of_memory) throw std::bad_alloc();
}

// Fields a family's kernels add to their dicts in `<family>_kernels()` (besides name, tier and
// runs_here): an overload per family that has any.
template <class K>
void kernel_fields(pybind11::dict&, const K&) {}
inline void kernel_fields(pybind11::dict& d, const GemmS8Kernel& k) {
  d["mr"] = k.mr, d["nr"] = k.nr, d["kr"] = k.kr;
  // A tile kernel's calls with fewer rows run its small-M kernel (gemm_s8.h).
  d["small_m_rows"] = k.small_m_rows;
  d["small_m_kernel"] = k.small_m != nullptr ? pybind11::object(pybind11::str(k.small_m->name)) : pybind11::none();
}
inline void kernel_fields(pybind11::dict& d, const GemmQ4Kernel& k) {
  d["mr"] = k.mr;
  d["small_m_rows"] = k.small_m_rows;
  d["small_m_kernel"] = k.small_m != nullptr ? pybind11::object(pybind11::str(k.small_m->name)) : pybind11::none();
}
inline void kernel_fields(pybind11::dict& d, const SparseS8Kernel& k) { d["a_unsigned"] = k.a_unsigned; }

// Defines `<family>_kernels()` (every kernel built in, lowest tier first, as dicts) and
// `<family>_select(cap)` (the registry's pick under a cap) for one row of EC_KERNEL_FAMILIES.
template <class K>
void def_family(pybind11::module_& m, const std::string& family, int (*list)(const K* const**),
                const K* (*select)(Isa)) {
  namespace py = pybind11;
  m.def((family + "_kernels").c_str(), [list] {
    const K* const* ks;
    const int n = list(&ks);
    py::list out;
    for (int i = 0; i < n; ++i) {
      py::dict d;
      d["name"] = ks[i]->name;
      d["tier"] = isa_name(ks[i]->isa);
      kernel_fields(d, *ks[i]);
      d["runs_here"] = cpu_has(ks[i]->needs);
      out.append(d);
    }
    return out;
  }, ("Every " + family + " kernel built into this binary, lowest tier first.").c_str());
  m.def((family + "_select").c_str(), [select](const std::string& cap) {
    Isa isa;
    if (!isa_from_name(cap.c_str(), &isa)) throw std::invalid_argument("unknown tier '" + cap + "'");
    return std::string(select(isa)->name);
  }, ("Name of the " + family + " kernel the registry picks under a tier cap.").c_str());
}

}  // namespace edgecompress::bindings
