// Dense float32 weights (the factors of LowRankWeight): packing, the fp32 linear and the fused
// low-rank product. The Python layer validates user input first; these checks guard the boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::contiguous;
using bindings::require;

namespace {

std::unique_ptr<PackedDenseF32> pack(const py::array& w, const std::string& kernel) {
  require(py::isinstance<py::array_t<float>>(w) && w.ndim() == 2 && contiguous(w) && w.shape(0) > 0 &&
              w.shape(1) > 0 && w.shape(0) <= INT32_MAX && w.shape(1) <= INT32_MAX,
          "w: expected float32 (N, K) C-contiguous, N and K > 0");
  const DenseKernel& kern = bindings::kernel_by_name(dense_f32_kernels, kernel);
  const float* p = static_cast<const float*>(w.data());
  const int n = static_cast<int>(w.shape(0)), k = static_cast<int>(w.shape(1));
  py::gil_scoped_release release;
  return pack_dense_f32(kern, p, n, k);
}

py::array linear(const PackedDenseF32& w, const py::array& x, const py::object& bias, int act, const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.w.k, w.w.n, bias, act, out);
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = dense_f32(w, a.x, w.w.k, a.m, a.bias, static_cast<Activation>(act), yp, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

py::array lowrank(const PackedDenseF32& v, const PackedDenseF32& u, const py::array& x, const py::object& bias, int act,
                  const py::object& out) {
  require(u.w.k == v.w.n, "u, v: u must have as many columns as v has rows (the rank)");
  bindings::LinearArrays a = bindings::linear_arrays(x, v.w.k, u.w.n, bias, act, out);
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = lowrank_f32(v, u, a.x, v.w.k, a.m, a.bias, static_cast<Activation>(act), yp, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

}  // namespace

void register_dense(py::module_& m) {
  py::class_<PackedDenseF32>(m, "PackedDenseF32", "A float32 weight packed in panels for dense_f32 (opaque).")
      .def_property_readonly("kernel", [](const PackedDenseF32& w) { return std::string(w.kernel->name); })
      .def_property_readonly("nbytes", &PackedDenseF32::nbytes);
  m.def("pack_dense_f32", &pack, py::arg("w"), py::arg("kernel"));
  m.def("linear_dense_f32", &linear, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
  m.def("linear_lowrank_f32", &lowrank, py::arg("v"), py::arg("u"), py::arg("x"), py::arg("bias"),
        py::arg("activation"), py::arg("out") = py::none());
}
