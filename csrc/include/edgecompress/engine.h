// The native executor of an engine program (python/edgecompress/engine): a plan is the program
// planned for one set of input shapes — every node with its sizes fixed and every operand placed
// (the arena of reused buffers, a caller's input or output, or a constant array) — and a run executes
// the nodes in order, each on the thread pool, without returning to Python.
//
// The Python planner checks every size, offset and array before it builds a plan; a run checks only
// what depends on the input values (token ids against the table size) and NaN/Inf, and reports them
// by status and node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "edgecompress/driver.h"
#include "edgecompress/engine_ops.h"
#include "edgecompress/types.h"

namespace edgecompress {
namespace engine {

enum class Op : int {
  linear = 0,    // in: x (i0 rows, row stride i1 floats), bias?; out: y (i0, n) contiguous. i2: Activation
  norm,          // in: x, residual?, gamma, beta?; out: y, sum?. i0 rows, i1 n, i2 rms; f0 eps
  attention,     // in: q, k, v (row strides i5, i8, i9 floats), mask? (int64 (i0, i7)); out: y
                 // (i0 * i1, i2 * i4). i0 batch, i1 queries, i2 heads, i3 kv heads, i4 head size,
                 // i6 causal, i7 keys per sequence; f0 scale. i10 = 1: packed sequences, in[3] holds
                 // the offsets (int64 (i0 + 1)) of each sequence's rows in q, k, v and y, i1 = i7 the
                 // longest a sequence can be (the rows there are; offsets outside 0..i1 or decreasing
                 // are bad_input)
  gelu,          // in: x; out: y. i0 values
  add,           // in: a, b; out: y. i0 values, i1 length of b (b repeats every i1 values). i2 > 0: then
                 // UnaryAct i2 - 1 on y. i3 > 0: a is blocks of i3 values, each with its own i1 values of b
                 // (a (batch, h, w, c) times b (batch, c): squeeze-excitation's channel scale)
  mul,           // as add
  softmax,       // in: x; out: y. i0 rows, i1 n
  embedding,     // in: ids (int64, i0), table (i2 rows of i1), scale? (int8 table: one per row); out: y.
                 // i3: 0 float32 table, 1 int8 table, 2 two 4-bit tables hi, lo (in[1], in[2]: i1 / 2
                 // bytes a row) and float16 scales (in[3]: i1 / 32 a row), value d (16 (hi - 8) + lo);
                 // 3 the rows of two packed 4-bit weights (weight, weight2: a product's own, e.g. the
                 // output head tied to the embeddings) added: hi row + lo row, each (code - zp) * scale
  position_ids,  // in: ids (int64 (i0, i1)); out: int64 (i0, i1). i2 mode: 0 -> i3 + s;
                 // 1 -> for ids != i3 (the padding id): i3 + their running count in the row, else i3
  mean_pool,     // in: x (i0, i1, i2), mask? (int64 (i0, i1)); out: y (i0, i2)
  pack,          // in: mask (int64 (i0, i1)); out: index (int64 (i2)) of the positions whose mask is not 0,
                 // in order, and offsets (int64 (i0 + 1)) of each sequence's first token among them.
                 // i2: the count the plan was made for (another count is bad_input)
  gather,        // in: x (i0 rows of i1 bytes), index (int64 (i2)); out: y (i2 rows): y[t] = x[index[t]]
  scatter,       // in: x (i2 rows of i1 bytes), index (int64 (i2)); out: y (i0 rows, zero but for
                 // y[index[t]] = x[t])
  rope,          // in: qkv (i0 rows of i6 floats: i1 query heads, i2 key heads, then values, each i3
                 // wide), pos (int64 (1)), inv_freq (i4 / 2), qk_gamma? (2, i3); out: the same rows with
                 // each query and key head RMS-normalized by its gamma row (when given; f0 eps) and its
                 // first i4 values rotated by angle (pos + row) * inv_freq: pairs (2j, 2j + 1) (i5 = 0,
                 // GPT-J / llama.cpp "norm") or (j, j + i4 / 2) (i5 = 1, GPT-NeoX). Values copied.
  kv_attention,  // in: qkv (rotated, as rope's out), k_cache, v_cache (i4 slots of i2 * i3 floats, read and
                 // written: the caller's state), pos (int64 (1)); out: y (i0, i1 * i3). Query t sits at
                 // position pos + t and sees keys at positions <= its own (and, i5 > 0, within the last i5
                 // of them), the earlier ones from the cache (position p in slot p % i4), the call's own from
                 // qkv; then the call's keys and values are stored. i6: the row stride of qkv; f0 scale.
                 // pos < 0, or (i5 = 0) pos + i0 > i4: bad_input
  glu,           // in: gate, up (i0 rows; row strides i3, i4 floats); out: y (i0, i1) = act(gate) * up,
                 // i2 act: 0 SiLU, 1 GELU (tanh form)
  concat,        // in: up to 4 arrays of i0 rows, widths i1..i4 (0: absent); out: y (i0, their sum)
  // The 2-D window ops on channels-last images: i0 batch, i1 h, i2 w, i3 c, i4 ho, i5 wo, i6 kh, i7 kw,
  // i8 sh, i9 sw, i10 pt, i11 pl, i12 dh, i13 dw (Window2d); x (i0, i1, i2, i3), y (i0, i4, i5, n).
  conv2d,        // in: x, bias?; the linear weight (n = i15 rows of kh * kw * c: taps in (kh, kw, c) order),
                 // or (grouped) weights: one per group of c / groups channels, n / groups rows of
                 // kh * kw * c / groups each, group g's outputs the columns g * n / groups onwards;
                 // i14 = Activation of the product's epilogue + 4 * (UnaryAct + 1, or 0): the unary pass
                 // runs on each tile of output rows while it is in cache. Rows of patches are gathered
                 // into tiles of about kPatchBytes and run through the weight's product, tile by tile
                 // (a 1x1 kernel with stride 1 and no padding reads x's rows where they are). An int8 weight
                 // with dynamic_symmetric activations (but for those 1x1 kernels) quantizes each image
                 // with its own scale, max |x| / 127 over the image, its tiles within one image
  depthwise,     // in: x, w (kh, kw, c), bias?; out: y (n = c). i14 > 0: then UnaryAct i14 - 1
  pool,          // in: x; out: y (n = c). i14 mode: Window2d's pool_row
  act,           // in: x; out: y. i0 values, i1 UnaryAct
  transpose,     // in: x (i0 blocks of i1 rows of i2 values, i3 bytes each); out: y (i0 blocks of i2 rows
                 // of i1): channels first <-> channels last
  winograd,      // in: x, bias?; out: y. A conv2d's ints (3x3 kernel, stride 1, no dilation); weights: the
                 // dense_f32 products of Winograd F(m x m, 3x3), 16 (m = 2) or 36 (m = 4), e = (m + 2) a + b
                 // the (n, c) matrix of the transformed weights (G g G^T)[a][b] (EngineKernel::winograd_in
                 // / winograd_out). Tiles of m x m outputs go in blocks: the block's input transforms,
                 // the products, the output transforms (bias, activation)
  winograd_s8,   // in: x, bias?; out: y. A conv2d's ints (3x3 kernel, stride 1, no dilation, at most
                 // kWinogradS8MaxChannels channels); weight: the conv's int8 weight (PackedS8Weight: its
                 // scales and quantizer), weight2: its integer Winograd F(2x2, 3x3) transform (winograd_s8.h's
                 // layout, int16); aq: a static scheme or dynamic_symmetric (a scale per image). The image is
                 // quantized once (conv2d's codes), tiles
                 // go in blocks as for winograd, and the outputs are conv2d's, bit for bit
  count
};

// Where an operand lives. offset: bytes from the start of the arena / the array.
enum class Space : int { none = 0, arena, input, output, constant };
struct Ref {
  Space space = Space::none;
  int index = 0;
  int64_t offset = 0;
};

enum class WeightKind : int { none = 0, s8, q4, sparse_f32, sparse_s8, sparse_nm_f32, dense_f32 };

struct Node {
  Op op = Op::count;
  Ref in[4];
  Ref out[2];
  int64_t i[16] = {};
  float f[2] = {};
  WeightKind wkind = WeightKind::none;  // linear: the packed weight's type
  const void* weight = nullptr;         // linear: the Packed* weight; embedding mode 3: hi
  const void* weight2 = nullptr;        // embedding mode 3: lo; winograd_s8: the transformed weight
  std::vector<const void*> weights;     // grouped conv2d: each group's Packed* weight (of kind wkind)
  ActQuant aq;                          // linear on an int8 weight
  Q4Compute q4 = Q4Compute::int8;       // linear on a 4-bit weight
};

enum class RunStatus : int { ok = 0, nonfinite_input, index_out_of_range, out_of_memory, bad_input };
struct RunResult {
  RunStatus status = RunStatus::ok;
  int node = -1;  // the node that failed
};

class Plan {
 public:
  // constants: the addresses of the constant arrays (kept alive by the caller).
  Plan(std::vector<Node> nodes, int64_t arena_bytes, std::vector<const void*> constants, const EngineKernel& kernel);
  // Runs every node. node_seconds (optional, one per node) receives each node's wall time. Calls of
  // one plan from several threads run one at a time (they share the arena).
  RunResult run(const void* const* inputs, void* const* outputs, int max_threads, double* node_seconds);
  const std::vector<Node>& nodes() const { return nodes_; }
  int64_t arena_bytes() const { return arena_bytes_; }

 private:
  std::vector<Node> nodes_;
  int64_t arena_bytes_;
  std::vector<const void*> constants_;
  const EngineKernel* kernel_;
  AlignedArray<uint8_t> arena_;
  std::mutex mu_;
};

}  // namespace engine
}  // namespace edgecompress
