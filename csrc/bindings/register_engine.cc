// The engine's native plan (engine.h) as _core.EnginePlan. edgecompress.engine plans a program for
// one set of input shapes and hands over plain tuples; these checks guard only the boundary (operand
// spaces and indices, the kinds of weights, the byte sizes of the caller's arrays on each run).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "edgecompress/engine.h"
#include "edgecompress/threadpool.h"
#include "edgecompress/winograd_s8.h"
#include "common.h"

namespace py = pybind11;
using namespace edgecompress;
using bindings::require;

namespace {

struct PyPlan {
  std::unique_ptr<engine::Plan> plan;
  std::vector<int64_t> input_bytes, output_bytes;
  py::list keepalive;  // the constant arrays and packed weights the nodes point into
};

engine::Ref to_ref(const py::handle& h, size_t n_in, size_t n_out, size_t n_const) {
  const auto t = h.cast<std::tuple<int, int, int64_t>>();
  engine::Ref r;
  const int space = std::get<0>(t);
  require(space >= 0 && space <= static_cast<int>(engine::Space::constant), "operand: unknown space");
  r.space = static_cast<engine::Space>(space);
  r.index = std::get<1>(t);
  r.offset = std::get<2>(t);
  const size_t limit = r.space == engine::Space::input ? n_in : r.space == engine::Space::output ? n_out
                       : r.space == engine::Space::constant ? n_const : 1;
  require(r.index >= 0 && static_cast<size_t>(r.index) < limit && r.offset >= 0, "operand: index out of range");
  return r;
}

void set_weight(engine::Node& nd, const py::object& w) {
  if (py::isinstance<PackedS8Weight>(w)) nd.wkind = engine::WeightKind::s8, nd.weight = w.cast<PackedS8Weight*>();
  else if (py::isinstance<PackedQ4Weight>(w)) nd.wkind = engine::WeightKind::q4, nd.weight = w.cast<PackedQ4Weight*>();
  else if (py::isinstance<PackedSparseF32>(w)) nd.wkind = engine::WeightKind::sparse_f32, nd.weight = w.cast<PackedSparseF32*>();
  else if (py::isinstance<PackedSparseS8>(w)) nd.wkind = engine::WeightKind::sparse_s8, nd.weight = w.cast<PackedSparseS8*>();
  else if (py::isinstance<PackedSparseNmF32>(w)) nd.wkind = engine::WeightKind::sparse_nm_f32, nd.weight = w.cast<PackedSparseNmF32*>();
  else if (py::isinstance<PackedDenseF32>(w)) nd.wkind = engine::WeightKind::dense_f32, nd.weight = w.cast<PackedDenseF32*>();
  else throw py::type_error("linear node: expected a packed weight");
}

std::unique_ptr<PyPlan> make_plan(const py::list& nodes, int64_t arena_bytes, const py::list& constants,
                                  const std::vector<int64_t>& input_bytes, const std::vector<int64_t>& output_bytes,
                                  const std::string& kernel) {
  require(arena_bytes >= 0, "arena_bytes: expected >= 0");
  auto p = std::make_unique<PyPlan>();
  p->input_bytes = input_bytes;
  p->output_bytes = output_bytes;
  std::vector<const void*> cptr;
  for (const auto& c : constants) {
    const auto a = py::reinterpret_borrow<py::array>(c);
    require(py::isinstance<py::array>(c) && bindings::contiguous(a), "constants: expected C-contiguous arrays");
    cptr.push_back(a.data());
    p->keepalive.append(c);
  }
  std::vector<engine::Node> out;
  for (const auto& item : nodes) {
    const auto t = item.cast<py::tuple>();
    require(t.size() == 9, "node: expected 9 fields");
    engine::Node nd;
    const int op = t[0].cast<int>();
    require(op >= 0 && op < static_cast<int>(engine::Op::count), "node: unknown op");
    nd.op = static_cast<engine::Op>(op);
    const auto ins = t[1].cast<py::list>(), outs = t[2].cast<py::list>();
    require(ins.size() <= 4 && outs.size() <= 2, "node: too many operands");
    for (size_t i = 0; i < ins.size(); ++i) nd.in[i] = to_ref(ins[i], input_bytes.size(), output_bytes.size(), cptr.size());
    for (size_t i = 0; i < outs.size(); ++i) nd.out[i] = to_ref(outs[i], input_bytes.size(), output_bytes.size(), cptr.size());
    const auto ints = t[3].cast<std::vector<int64_t>>();
    const auto floats = t[4].cast<std::vector<float>>();
    require(ints.size() <= 16 && floats.size() <= 2, "node: too many attributes");
    for (size_t i = 0; i < ints.size(); ++i) nd.i[i] = ints[i];
    for (size_t i = 0; i < floats.size(); ++i) nd.f[i] = floats[i];
    if (nd.op == engine::Op::embedding && !t[5].is_none()) {  // mode 3: the rows of two packed 4-bit weights
      const auto pair = t[5].cast<py::tuple>();
      require(pair.size() == 2 && py::isinstance<PackedQ4Weight>(pair[0]) && py::isinstance<PackedQ4Weight>(pair[1]),
              "embedding node: expected two packed 4-bit weights");
      const auto* hi = pair[0].cast<PackedQ4Weight*>();
      const auto* lo = pair[1].cast<PackedQ4Weight*>();
      require(nd.i[3] == 3 && hi->w.n == nd.i[2] && lo->w.n == nd.i[2] && hi->w.k == nd.i[1] && lo->w.k == nd.i[1] &&
                  hi->w.table_f32 == nullptr && lo->w.table_f32 == nullptr && hi->w.table_i8 == nullptr &&
                  lo->w.table_i8 == nullptr,
              "embedding node: the packed weights do not match its rows and width, or hold codebooks");
      nd.weight = hi, nd.weight2 = lo;
      p->keepalive.append(t[5]);
    }
    require(nd.op != engine::Op::embedding || nd.i[3] != 3 || nd.weight2 != nullptr,
            "embedding node: mode 3 needs its packed weights");
    const bool winograd = nd.op == engine::Op::winograd;
    if ((nd.op == engine::Op::conv2d && py::isinstance<py::list>(t[5])) || winograd) {
      // grouped: one weight per group; winograd: the 16 or 36 transformed products
      require(py::isinstance<py::list>(t[5]), "winograd node: expected a list of 16 or 36 weights");
      const auto ws = t[5].cast<py::list>();
      if (winograd) {
        require((ws.size() == 16 || ws.size() == 36) && nd.i[6] == 3 && nd.i[7] == 3 && nd.i[8] == 1 && nd.i[9] == 1 && nd.i[12] == 1 &&
                    nd.i[13] == 1,
                "winograd node: expected 16 or 36 weights and a 3x3 window of stride 1, not dilated");
      } else {
        require(ws.size() >= 2 && nd.i[3] % static_cast<int64_t>(ws.size()) == 0 &&
                    nd.i[15] % static_cast<int64_t>(ws.size()) == 0,
                "conv2d node: expected 2 or more group weights, dividing its channels and outputs");
      }
      for (const auto& w : ws) {
        engine::Node one;
        set_weight(one, py::reinterpret_borrow<py::object>(w));
        require(nd.weights.empty() || one.wkind == nd.wkind, "conv2d node: the group weights differ in kind");
        nd.wkind = one.wkind;
        nd.weights.push_back(one.weight);
      }
      nd.weight = nd.weights[0];
      if (winograd) {
        for (const void* w : nd.weights) {
          const DenseF32& d = static_cast<const PackedDenseF32*>(w)->w;
          require(nd.wkind == engine::WeightKind::dense_f32 && d.k == nd.i[3] && d.n == nd.i[15],
                  "winograd node: expected dense float32 weights of (n, c)");
        }
      }
      p->keepalive.append(t[5]);
    } else if (nd.op == engine::Op::linear || nd.op == engine::Op::conv2d) {
      set_weight(nd, t[5]);
      p->keepalive.append(t[5]);
    }
    const bool winograd_s8 = nd.op == engine::Op::winograd_s8;
    if (winograd_s8) {
      // (the conv's packed int8 weight, its integer Winograd transform: 16 x panels x c pairs x 32 int16)
      require(py::isinstance<py::tuple>(t[5]) && t[5].cast<py::tuple>().size() == 2,
              "winograd_s8 node: expected (packed int8 weight, transformed weight)");
      const auto pair = t[5].cast<py::tuple>();
      require(py::isinstance<PackedS8Weight>(pair[0]) && py::isinstance<py::array_t<int16_t>>(pair[1]),
              "winograd_s8 node: expected a packed int8 weight and an int16 array");
      const auto* w = pair[0].cast<PackedS8Weight*>();
      const auto u = py::reinterpret_borrow<py::array>(pair[1]);
      const int64_t c = nd.i[3], n = nd.i[15];
      require(nd.i[6] == 3 && nd.i[7] == 3 && nd.i[8] == 1 && nd.i[9] == 1 && nd.i[12] == 1 && nd.i[13] == 1 && c >= 1 &&
                  c <= kWinogradS8MaxChannels,
              "winograd_s8 node: expected a 3x3 window of stride 1, not dilated, over 1 to " +
                  std::to_string(kWinogradS8MaxChannels) + " channels");
      require(w->n == n && w->k == 9 * c && bindings::contiguous(u) && u.dtype().is(py::dtype::of<int16_t>()) &&
                  u.size() == 16 * ((n + 15) / 16) * ((c + 1) / 2) * 32,
              "winograd_s8 node: the weights do not match its channels and outputs");
      nd.wkind = engine::WeightKind::s8, nd.weight = w, nd.weight2 = u.data();
      p->keepalive.append(t[5]);
    }
    if (nd.op == engine::Op::linear || nd.op == engine::Op::conv2d || winograd || winograd_s8) {
      const int scheme = t[6].cast<int>();
      require(scheme >= 0 && scheme <= static_cast<int>(ActScheme::static_asymmetric), "node: act scheme out of range");
      nd.aq.scheme = static_cast<ActScheme>(scheme);
      nd.aq.scale = t[7].cast<py::tuple>()[0].cast<float>();
      nd.aq.zero_point = t[7].cast<py::tuple>()[1].cast<int>();
      nd.q4 = t[8].cast<int>() == 0 ? Q4Compute::int8 : Q4Compute::float32;
      require(!winograd_s8 || nd.aq.scheme == ActScheme::dynamic_symmetric ||
                  ((nd.aq.scheme == ActScheme::static_symmetric ||
                    (nd.aq.scheme == ActScheme::static_asymmetric && nd.aq.zero_point >= 0 && nd.aq.zero_point <= 255)) &&
                   nd.aq.scale > 0 && std::isfinite(nd.aq.scale)),
              "winograd_s8 node: expected a dynamic symmetric or static activation scale (zero point in 0..255)");
      const int64_t act = nd.op == engine::Op::linear ? nd.i[2] : nd.i[14] % 4;
      require(act >= 0 && act <= static_cast<int>(Activation::gelu), "node: activation out of range");
      require(nd.op == engine::Op::linear || (nd.i[14] >= 0 && nd.i[14] / 4 <= static_cast<int>(UnaryAct::count)),
              "node: unary activation out of range");
    }
    out.push_back(nd);
  }
  const EngineKernel& k = bindings::kernel_by_name(engine_f32_kernels, kernel);
  p->plan = std::make_unique<engine::Plan>(std::move(out), arena_bytes, std::move(cptr), k);
  return p;
}

std::vector<const void*> check_arrays(const py::list& arrays, const std::vector<int64_t>& bytes, const char* what,
                                      bool writeable) {
  require(arrays.size() == bytes.size(), std::string(what) + ": wrong count");
  std::vector<const void*> ptrs;
  for (size_t i = 0; i < arrays.size(); ++i) {
    require(py::isinstance<py::array>(arrays[i]), std::string(what) + ": expected numpy arrays");
    const auto a = py::reinterpret_borrow<py::array>(arrays[i]);
    require(bindings::contiguous(a) && a.nbytes() == bytes[i] && (!writeable || a.writeable()),
            std::string(what) + " " + std::to_string(i) + ": expected a C-contiguous array of " + std::to_string(bytes[i]) +
                " bytes");
    ptrs.push_back(a.data());
  }
  return ptrs;
}

py::tuple run(PyPlan& p, const py::list& inputs, const py::list& outputs, bool profile) {
  const auto in = check_arrays(inputs, p.input_bytes, "inputs", false);
  const auto outc = check_arrays(outputs, p.output_bytes, "outputs", true);
  std::vector<void*> out;
  for (const void* o : outc) out.push_back(const_cast<void*>(o));
  std::vector<double> seconds(profile ? p.plan->nodes().size() : 0);
  engine::RunResult r;
  {
    py::gil_scoped_release release;
    r = p.plan->run(in.data(), out.data(), get_num_threads(), profile ? seconds.data() : nullptr);
  }
  if (r.status == engine::RunStatus::out_of_memory) throw std::bad_alloc();
  return py::make_tuple(static_cast<int>(r.status), r.node, profile ? py::cast(seconds) : py::none());
}

}  // namespace

void register_engine(py::module_& m) {
  py::class_<PyPlan>(m, "EnginePlan", "An engine program planned for one set of input shapes (opaque).")
      .def(py::init(&make_plan), py::arg("nodes"), py::arg("arena_bytes"), py::arg("constants"), py::arg("input_bytes"),
           py::arg("output_bytes"), py::arg("kernel"))
      .def_property_readonly("arena_bytes", [](const PyPlan& p) { return p.plan->arena_bytes(); })
      .def("run", &run, py::arg("inputs"), py::arg("outputs"), py::arg("profile") = false,
           "Runs every node; returns (status, failed node, per-node seconds or None).");
}
