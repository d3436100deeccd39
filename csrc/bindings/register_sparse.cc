// Sparse float32 weights: packing and the fp32 linear. The Python layer (edgecompress.ops and
// SparseWeight) validates user input first; these checks only guard the boundary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::contiguous;
using bindings::require;

namespace {

std::unique_ptr<PackedSparseF32> pack(int n, int k, int r, const py::array& indptr, const py::array& indices,
                                      const py::array& values, const std::string& kernel) {
  require(n > 0 && k > 0 && (r == 1 || r == 4 || r == 8), "shape or block: out of range");
  const int64_t block_rows = (static_cast<int64_t>(n) + r - 1) / r;
  require(py::isinstance<py::array_t<int64_t>>(indptr) && indptr.ndim() == 1 && indptr.shape(0) == block_rows + 1 &&
              contiguous(indptr),
          "indptr: expected int64 (N / r + 1,)");
  const int64_t* ip = static_cast<const int64_t*>(indptr.data());
  require(ip[0] == 0, "indptr: must start at 0");
  for (int64_t b = 0; b < block_rows; ++b) require(ip[b + 1] >= ip[b], "indptr: must not decrease");
  const int64_t nnzb = ip[block_rows];
  const bool idx16 = py::isinstance<py::array_t<uint16_t>>(indices);
  require((idx16 || py::isinstance<py::array_t<int32_t>>(indices)) && indices.ndim() == 1 && indices.shape(0) == nnzb &&
              contiguous(indices),
          "indices: expected uint16 or int32 (nnz,)");
  for (int64_t j = 0; j < nnzb; ++j) {
    const int64_t c = idx16 ? static_cast<const uint16_t*>(indices.data())[j] : static_cast<const int32_t*>(indices.data())[j];
    require(c >= 0 && c < k, "indices: out of range 0..K-1");
  }
  require(py::isinstance<py::array_t<float>>(values) && values.size() == nnzb * r && contiguous(values),
          "values: expected float32 with nnz * r values");
  const SparseKernel& kern = bindings::kernel_by_name(sparse_f32_kernels, kernel);
  const void* ix = indices.data();
  const float* v = static_cast<const float*>(values.data());
  py::gil_scoped_release release;
  return pack_sparse_f32(kern, n, k, r, ip, ix, idx16, v);
}

py::array linear(const PackedSparseF32& w, const py::array& x, const py::object& bias, int act, const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.w.k, w.w.n, bias, act, out);
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = sparse_f32(w, a.x, w.w.k, a.m, a.bias, static_cast<Activation>(act), yp, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

std::unique_ptr<PackedSparseS8> pack_s8(int n, int k, const py::array& indptr, const py::array& indices,
                                        const py::array& values, const py::array& scale, const std::string& kernel) {
  require(n > 0 && k > 0, "shape: out of range");
  const int64_t kblocks = (static_cast<int64_t>(k) + 3) / 4;
  require(py::isinstance<py::array_t<int64_t>>(indptr) && indptr.ndim() == 1 && indptr.shape(0) == n + 1 &&
              contiguous(indptr),
          "indptr: expected int64 (N + 1,)");
  const int64_t* ip = static_cast<const int64_t*>(indptr.data());
  require(ip[0] == 0, "indptr: must start at 0");
  for (int64_t r = 0; r < n; ++r) require(ip[r + 1] >= ip[r], "indptr: must not decrease");
  const int64_t nnzb = ip[n];
  const bool idx16 = py::isinstance<py::array_t<uint16_t>>(indices);
  require((idx16 || py::isinstance<py::array_t<int32_t>>(indices)) && indices.ndim() == 1 && indices.shape(0) == nnzb &&
              contiguous(indices),
          "indices: expected uint16 or int32 (nnzb,) block indices");
  for (int64_t j = 0; j < nnzb; ++j) {
    const int64_t c = idx16 ? static_cast<const uint16_t*>(indices.data())[j] : static_cast<const int32_t*>(indices.data())[j];
    require(c >= 0 && c < kblocks, "indices: out of range 0..K/4-1");
  }
  require(py::isinstance<py::array_t<int8_t>>(values) && values.size() == nnzb * 4 && contiguous(values),
          "values: expected int8 with nnzb * 4 values");
  const int8_t* v = static_cast<const int8_t*>(values.data());
  for (int64_t j = 0; j < nnzb * 4; ++j) require(v[j] != -128, "values: expected int8 in [-127, 127]");
  require(py::isinstance<py::array_t<float>>(scale) && scale.ndim() == 1 && (scale.shape(0) == n || scale.shape(0) == 1) &&
              contiguous(scale),
          "scale: expected float32 (N,) or (1,)");
  const SparseS8Kernel& kern = bindings::kernel_by_name(sparse_s8_kernels, kernel);
  const void* ix = indices.data();
  const float* sc = static_cast<const float*>(scale.data());
  const int scale_len = static_cast<int>(scale.shape(0));
  py::gil_scoped_release release;
  return pack_sparse_s8(kern, n, k, ip, ix, idx16, v, sc, scale_len);
}

py::array linear_s8(const PackedSparseS8& w, const py::array& x, const py::object& bias, int act, const py::object& out) {
  bindings::LinearArrays a = bindings::linear_arrays(x, w.w.k, w.w.n, bias, act, out);
  float* yp = static_cast<float*>(a.y.mutable_data());
  GemmStatus status;
  {
    py::gil_scoped_release release;
    status = sparse_s8(w, a.x, w.w.k, a.m, a.bias, static_cast<Activation>(act), yp, get_num_threads());
  }
  bindings::raise_for(status);
  return a.y;
}

}  // namespace

void register_sparse(py::module_& m) {
  py::class_<PackedSparseF32>(m, "PackedSparseF32", "A pruned float32 weight packed for sparse_f32 (opaque).")
      .def_property_readonly("kernel", [](const PackedSparseF32& w) { return std::string(w.kernel->name); })
      .def_property_readonly("nbytes", &PackedSparseF32::nbytes);
  m.def("pack_sparse_f32", &pack, py::arg("n"), py::arg("k"), py::arg("r"), py::arg("indptr"), py::arg("indices"),
        py::arg("values"), py::arg("kernel"));
  m.def("linear_sparse_f32", &linear, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
  py::class_<PackedSparseS8>(m, "PackedSparseS8", "A pruned int8 weight packed for sparse_s8 (opaque).")
      .def_property_readonly("kernel", [](const PackedSparseS8& w) { return std::string(w.kernel->name); })
      .def_property_readonly("nbytes", &PackedSparseS8::nbytes);
  m.def("pack_sparse_s8", &pack_s8, py::arg("n"), py::arg("k"), py::arg("indptr"), py::arg("indices"), py::arg("values"),
        py::arg("scale"), py::arg("kernel"));
  m.def("linear_sparse_s8", &linear_s8, py::arg("w"), py::arg("x"), py::arg("bias"), py::arg("activation"),
        py::arg("out") = py::none());
}
