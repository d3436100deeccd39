// N:M sparse float32 weights: packing and the fp32 linear. The Python layer (SparseWeight and
// edgecompress.ops) validates user input first; these checks only guard the boundary. Positions are
// masked to 0..m-1 by every kernel, so no meta byte can make a kernel read outside x.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::contiguous;
using bindings::require;

namespace {

std::unique_ptr<PackedSparseNmF32> pack(int n, int k, int kept, int group, const py::array& values, const py::array& meta,
                                        const std::string& kernel) {
  require(n > 0 && k > 0 && k <= (1 << 30), "shape: expected N > 0 and 0 < K <= 2**30");
  require((kept == 2 && group == 4) || (kept == 1 && group == 4) || (kept == 4 && group == 8),
          "kept, group: expected the pattern 2:4, 1:4 or 4:8");
  const int64_t row_values = (static_cast<int64_t>(k) + group - 1) / group * kept;
  const int64_t row_meta = (row_values * (group == 8 ? 4 : 2) + 7) / 8;
  require(py::isinstance<py::array_t<float>>(values) && values.ndim() == 2 && values.shape(0) == n &&
              values.shape(1) == row_values && contiguous(values),
          "values: expected float32 (N, " + std::to_string(row_values) + ") C-contiguous");
  require(py::isinstance<py::array_t<uint8_t>>(meta) && meta.ndim() == 2 && meta.shape(0) == n &&
              meta.shape(1) == row_meta && contiguous(meta),
          "meta: expected uint8 (N, " + std::to_string(row_meta) + ") C-contiguous");
  const SparseNmKernel& kern = bindings::kernel_by_name(sparse_nm_f32_kernels, kernel);
  const float* v = static_cast<const float*>(values.data());
  const uint8_t* mt = static_cast<const uint8_t*>(meta.data());
  py::gil_scoped_release release;
  return pack_sparse_nm_f32(kern, n, k, kept, group, v, mt);
}

py::array linear(const PackedSparseNmF32& w, const py::array& x, const py::object& bias, int act, const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.w.k, w.w.n, bias, act, out);
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = sparse_nm_f32(w, a.x, w.w.k, a.m, a.bias, static_cast<Activation>(act), yp, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

}  // namespace

void register_sparse_nm(py::module_& m) {
  py::class_<PackedSparseNmF32>(m, "PackedSparseNmF32", "An N:M sparse float32 weight packed for sparse_nm_f32 (opaque).")
      .def_property_readonly("kernel", [](const PackedSparseNmF32& w) { return std::string(w.kernel->name); })
      .def_property_readonly("nbytes", &PackedSparseNmF32::nbytes);
  m.def("pack_sparse_nm_f32", &pack, py::arg("n"), py::arg("k"), py::arg("kept"), py::arg("group"), py::arg("values"),
        py::arg("meta"), py::arg("kernel"));
  m.def("linear_sparse_nm_f32", &linear, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
}
