// int8 GEMM: weight packing, fp32 linear and the raw int32 kernel. The Python layer
// (edgecompress.ops) validates user input first; these checks only guard the boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::require;

namespace {

const GemmS8Kernel& kernel_by_name(const std::string& name) { return bindings::kernel_by_name(gemm_s8_kernels, name); }

template <class T>
void require_matrix(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a)) throw py::type_error(std::string(name) + ": wrong dtype");
  require(a.ndim() == 2, std::string(name) + ": expected 2 dimensions");
  require((a.flags() & py::array::c_style) != 0, std::string(name) + ": expected C-contiguous memory");
}

py::array linear(const PackedS8Weight& w, const py::array& x, const py::object& bias, int act, int scheme,
                 float scale, int zero_point, const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.k, w.n, bias, act, out);
  require(scheme >= 0 && scheme <= static_cast<int>(ActScheme::static_asymmetric), "scheme: out of range");
  require(scheme < static_cast<int>(ActScheme::static_symmetric) || (scale >= 1.17549435e-38f && scale <= 3.40282347e38f),
          "act_scale: expected a normal float32 > 0");
  require(zero_point >= 0 && zero_point <= 255, "act_zero_point: expected 0..255");
  ActQuant aq;
  aq.scheme = static_cast<ActScheme>(scheme);
  aq.scale = scale;
  aq.zero_point = zero_point;
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = gemm_s8(w, a.x, w.k, a.m, aq, a.bias, static_cast<Activation>(act), yp, nullptr, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

py::array_t<int32_t> qgemm(const PackedS8Weight& w, const py::array& a) {
  const bool is_s8 = py::isinstance<py::array_t<int8_t>>(a), is_u8 = py::isinstance<py::array_t<uint8_t>>(a);
  if (!is_s8 && !is_u8) throw py::type_error("a: expected int8 or uint8");
  require(a.ndim() == 2 && (a.flags() & py::array::c_style), "a: expected a C-contiguous matrix");
  require(a.shape(1) == w.k, "a: expected " + std::to_string(w.k) + " columns");
  require(a.shape(0) <= INT32_MAX, "a: too many rows");
  const int m = static_cast<int>(a.shape(0));
  py::array_t<int32_t> y({static_cast<py::ssize_t>(m), static_cast<py::ssize_t>(w.n)});
  ActQuant aq;
  aq.scheme = is_s8 ? ActScheme::raw_s8 : ActScheme::raw_u8;
  const void* ap = a.data();
  int32_t* yp = y.mutable_data();
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = gemm_s8(w, ap, w.k, m, aq, nullptr, Activation::none, nullptr, yp, get_num_threads());
  }
  bindings::raise_for(status);
  return y;
}

}  // namespace

void register_gemm(py::module_& m) {
  py::class_<PackedS8Weight>(m, "PackedS8Weight", "An int8 weight packed for one gemm_s8 kernel (opaque).")
      .def_property_readonly("kernel", [](const PackedS8Weight& w) { return std::string(w.kernel->name); })
      .def_property_readonly("tier", [](const PackedS8Weight& w) { return std::string(isa_name(w.kernel->isa)); })
      .def_readonly("n", &PackedS8Weight::n)
      .def_readonly("k", &PackedS8Weight::k)
      .def_property_readonly("nbytes", &PackedS8Weight::nbytes);

  m.def("pack_s8", [](const py::array& qweight, const py::array& scale, const std::string& kernel) {
    require_matrix<int8_t>(qweight, "qweight");
    const int n = static_cast<int>(qweight.shape(0)), k = static_cast<int>(qweight.shape(1));
    require(n > 0 && k > 0, "qweight: expected non-empty dimensions");
    if (!py::isinstance<py::array_t<float>>(scale)) throw py::type_error("scale: wrong dtype");
    require(scale.ndim() == 1 && (scale.shape(0) == n || scale.shape(0) == 1) && (scale.flags() & py::array::c_style),
            "scale: expected (N,) or (1,)");
    const GemmS8Kernel& kern = kernel_by_name(kernel);
    const int8_t* w = static_cast<const int8_t*>(qweight.data());
    const float* s = static_cast<const float*>(scale.data());
    const int scale_len = static_cast<int>(scale.shape(0));
    py::gil_scoped_release release;
    return pack_s8_weight(kern, w, n, k, s, scale_len);
  }, py::arg("qweight"), py::arg("scale"), py::arg("kernel"));

  m.def("linear_s8", &linear, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"),
        py::arg("scheme"), py::arg("scale"), py::arg("zero_point"), py::arg("out") = py::none());
  m.def("set_gemm_s8_min_parallel_macs", &set_gemm_s8_min_parallel_macs,
        "Test hook: run calls of at least this many multiply-adds on the thread pool.");
  m.def("qgemm_s8", &qgemm, py::arg("w"), py::arg("a"));
}
