// cvlth's direct sparse convolution for unstructured tickets on CPU (float32, NCHW, groups = 1).
//
// Only the kept weights are stored: for each, the offset of the input element it multiplies inside
// one image of the (zero-padded, stride-phased) input, channel, row and column folded into one
// number, and its value, side by side. No im2col matrix is built.
//
// The output is computed over the input's padded width (columns beyond the true output width are
// computed and dropped), so one weight's contribution to a run of consecutive outputs is one
// contiguous multiply-add. Each thread takes tiles of `kTile` consecutive outputs of one image and
// keeps, per output channel, the tile's sums in vector registers while it streams that channel's
// kept weights: one load of input per multiply-add, no load or store of the sums in between.
// The input channels are taken in chunks whose rows of the tile stay in L1 (the partial sums of
// every output channel wait in a per-thread buffer between chunks). The bias (a folded BN), the
// residual sum and the ReLU are applied on the way out, into the interior of an output that may be
// zero-padded already for the next convolution.
//
// Channel-major inputs ([C, N, H, W], `stack` = N) are one image to the kernel: each channel's plane
// holds the batch's images one above the other, and the rows between two images are computed like
// the padded columns, never written. Small planes (a 7x7 one is 49 outputs) then give long tiles.
//
// Threads: torch's own (at::parallel_for), over (image, tile) blocks.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CVLTH_X86 1
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

// the sums of one tile stay in registers: 16 of AVX-512's 32, 15 of AVX's 16 (the multiply-adds read
// their inputs from memory; the 16th holds the broadcast weight). With AVX2 on an AMD EPYC (Zen 3),
// ResNet-50 at batch 16, interleaved in one process (2026-12-04): 15 took 0.83-0.97x the time of 8
// at 95 % sparsity and 0.85-0.90x at 90 %; 14 about the same as 15, 12 no better than 8.
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
constexpr int kLanes = 16;
constexpr int kVectors = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kVectors = 15;
#else
constexpr int kLanes = 4;
constexpr int kVectors = 8;
#endif

constexpr int kTile = kLanes * kVectors;

typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float uvec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

// An output larger than this is stored past the caches (non-temporal stores, `stream`): it would not
// be read from them again, and an ordinary store first reads each line it writes. Measured on
// ResNet-50 at batch 16 here: 4 % faster at 90 % sparsity, 7 % at 95 % (2 MB: 3-7 % slower than 8).
constexpr int64_t kStreamBytes = 8 << 20;

static inline void store(float* d, vec y, bool stream) {
#ifdef CVLTH_X86
  if (stream) {  // d aligned to the vector
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
    _mm512_stream_ps(d, (__m512)y);
#elif defined(__AVX__)
    _mm256_stream_ps(d, (__m256)y);
#else
    _mm_stream_ps(d, (__m128)y);
#endif
    return;
  }
#endif
  *reinterpret_cast<uvec*>(d) = y;
}

// Per-thread scratch, kept from call to call: a fresh buffer cost its zeroing and its page faults on
// every call (the sums of 2048 output channels are 2 MB; a call on small planes takes ~0.1 ms).
// Of vectors: aligned to their size, so a sum's load or store never spans two cache lines (a buffer
// of floats was not: 4 % of the ticket at 90 % sparsity).
enum ScratchSlot { kSums, kMiddle, kLast, kMerged, kSlots };

static float* scratch(ScratchSlot slot, int64_t floats) {
  thread_local std::vector<vec> buffers[kSlots];
  std::vector<vec>& buffer = buffers[slot];
  const size_t vectors = static_cast<size_t>((floats + kLanes - 1) / kLanes);
  if (buffer.size() < vectors) buffer.resize(vectors);
  return reinterpret_cast<float*>(buffer.data());
}

// One tile of one output channel: its sums (from `sums`, or zero when `fresh`) plus its kept weights
// in [begin, end), kept in registers. Without `dst` they go back to `sums` (another chunk follows, or
// the caller writes them out); with it (the last chunk of a tile whose outputs are consecutive in
// the output: no padded width, no border) straight to the output, bias, residual and ReLU applied.
template <int NV>
__attribute__((always_inline)) static inline void accumulate_tile(const float* base, const int32_t* off, const float* val, int64_t begin,
                                   int64_t end, float* sums, bool fresh, float* dst, const float* res,
                                   float shift, bool relu, bool stream) {
  vec acc[NV];
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) acc[i] = fresh ? vec{} : *reinterpret_cast<const uvec*>(sums + i * kLanes);
  for (int64_t k = begin; k < end; ++k) {
    const float* p = base + off[2 * k];
    // p in a register of its own: each multiply-add then reads [p + constant]. Left to itself the
    // compiler folds the offset in ([base + off * 4 + constant]), and an instruction with three
    // operands and an indexed address is split in two micro-ops on Intel cores: 8.5 % of the whole
    // ticket's time at 90 % sparsity here (measured side by side).
    asm volatile("" : "+r"(p));
    // broadcast straight from memory (0 + v would be an add, then a shuffle on the FMA's port)
    const vec v = val[2 * k] - vec{};
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] += v * *reinterpret_cast<const uvec*>(p + i * kLanes);
  }
  if (dst == nullptr) {
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) *reinterpret_cast<uvec*>(sums + i * kLanes) = acc[i];
    return;
  }
  const vec zero = vec{};
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) {
    vec y = acc[i] + shift;
    if (res) y += *reinterpret_cast<const uvec*>(res + i * kLanes);
    if (relu) y = y > zero ? y : zero;
    store(dst + i * kLanes, y, stream);
  }
}

// a tile shorter than its vectors, where a full one would read past the input's end
static inline void accumulate_short(const float* base, const int32_t* off, const float* val, int64_t begin,
                                    int64_t end, int64_t len, float* sums, bool fresh) {
  if (fresh) std::fill(sums, sums + len, 0.0f);
  for (int64_t k = begin; k < end; ++k) {
    const float* p = base + off[2 * k];
    const float v = val[2 * k];
    for (int64_t t = 0; t < len; ++t) sums[t] += v * p[t];
  }
}

// y = relu?(sums + shift (+ residual)), for `count` outputs
static inline void write_out(float* d, const float* a, const float* q, int64_t count, float shift, bool relu) {
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
  // whole vectors, the rest under a mask: a row of a small plane (14 outputs) is one masked vector
  // (the compiler's vector loop left such a row to scalar code: 5 % of the ticket at 90 % and 95 %)
  const __m512 zero = _mm512_setzero_ps(), add = _mm512_set1_ps(shift);
  for (int64_t i = 0; i < count; i += kLanes) {
    const __mmask16 m = count - i >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (count - i)) - 1);
    __m512 y = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), add);
    if (q) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, q + i));
    if (relu) y = _mm512_max_ps(y, zero);
    _mm512_mask_storeu_ps(d + i, m, y);
  }
  return;
#endif
  if (q != nullptr) {
    if (relu) {
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) d[i] = std::max(a[i] + shift + q[i], 0.0f);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) d[i] = a[i] + shift + q[i];
    }
  } else if (relu) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) d[i] = std::max(a[i] + shift, 0.0f);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) d[i] = a[i] + shift;
  }
}

int64_t tile_floats() { return kTile; }

int64_t vector_lanes() { return kLanes; }

// ---------------------------------------------------------------------------------------------
// A dense convolution for a stem (few input channels, e.g. 3): channels-last, vectorized over the
// output channels, which are taken a group of up to 4 vectors at a time. A run of P output pixels of
// one row keeps the sums of its group's output channels in registers (P x V vectors); per tap, the V
// weight vectors are loaded once and serve the P pixels. A stem's 3 input channels leave no room for
// the sparse kernel's plane-wise vectors, and oneDNN's general path took twice ONNX Runtime's time here.
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif

template <int V>
constexpr int pixels_per_run() {
  return std::min(8, (kRegisters - 1 - V) / V);
}

// P output pixels starting at `src` (the input row of the first pixel's window, at tap (ky, 0, 0)):
// `step` floats between two pixels' windows (stride x channels), `row` floats between input rows,
// `taps` = kernel width x channels consecutive floats per kernel row; `w`, `bias` and `dst` start at
// the group's first output channel, `cout` (all output channels) apart
template <int V, int P>
static inline void dense_pixels(const float* src, int64_t step, int64_t row, int64_t kh, int64_t taps, int64_t cout,
                                const float* w, const float* bias, bool relu, float* dst) {
  vec acc[P][V];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[p][v] = *reinterpret_cast<const uvec*>(bias + v * kLanes);
  for (int64_t ky = 0; ky < kh; ++ky) {
    const float* r = src + ky * row;
    const float* wk = w + ky * taps * cout;
    for (int64_t t = 0; t < taps; ++t) {
      vec wv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) wv[v] = *reinterpret_cast<const uvec*>(wk + t * cout + v * kLanes);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const vec a = r[p * step + t] - vec{};  // a broadcast load (0 + a: an add and a shuffle)
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[p][v] += a * wv[v];
      }
    }
  }
  const vec zero = vec{};
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      vec y = acc[p][v];
      if (relu) y = y > zero ? y : zero;
      *reinterpret_cast<uvec*>(dst + p * cout + v * kLanes) = y;
    }
}

// One output row (image n, row oy) of the stem's conv into `dst` ([out_w, Cout], channels-last).
struct DenseConv {
  const float* x;  // [N, Hp, Wp, Cin], zero-padded
  const float* w;  // [KH, KW, Cin, Cout]
  const float* b;
  bool relu;
  int64_t hp, wp, cin, kh, kw, stride, out_w, cout;
};

// the row in groups of V vectors of output channels, `cout` floats apart
template <int V>
__attribute__((always_inline)) static inline void dense_row_groups(const DenseConv& c, int64_t n, int64_t oy,
                                                                   float* dst, int64_t cout) {
  constexpr int P = pixels_per_run<V>();
  const int64_t row = c.wp * c.cin, step = c.stride * c.cin, taps = c.kw * c.cin;
  const float* src = c.x + (n * c.hp + oy * c.stride) * row;
  for (int64_t g = 0; g < cout; g += V * kLanes) {
    const float* w = c.w + g;
    const float* b = c.b + g;
    int64_t ox = 0;
    for (; ox + P <= c.out_w; ox += P)
      dense_pixels<V, P>(src + ox * step, step, row, c.kh, taps, cout, w, b, c.relu, dst + ox * cout + g);
    for (; ox < c.out_w; ++ox)
      dense_pixels<V, 1>(src + ox * step, step, row, c.kh, taps, cout, w, b, c.relu, dst + ox * cout + g);
  }
}

template <int V>
static void dense_row(const DenseConv& c, int64_t n, int64_t oy, float* dst) {
  if (c.cout == V * kLanes)  // one group: its stride a constant, as before groups existed
    dense_row_groups<V>(c, n, oy, dst, V * kLanes);
  else
    dense_row_groups<V>(c, n, oy, dst, c.cout);
}

using DenseRow = void (*)(const DenseConv&, int64_t, int64_t, float*);

// Output channels of `vectors` vectors: in one group where they are 1 to 4 vectors, else in groups of
// kStemGroup where that divides them, else one vector at a time. ResNet-50's stem with AVX2 (64
// channels, 8 vectors; AMD EPYC Zen 3, batch 16, 2026-12-04): groups of 2 vectors (6 pixels a run)
// 27 ms, of 1 (8 pixels) 33 ms, of 4 (2 pixels) 47-51 ms; PyTorch's conv, BN, ReLU and pool 82 ms.
constexpr int64_t kStemGroup = 2;

static DenseRow dense_row_for(int64_t vectors) {
  const int64_t group = vectors <= 4 ? vectors : (vectors % kStemGroup == 0 ? kStemGroup : 1);
  switch (group) {
    case 1: return dense_row<1>;
    case 2: return dense_row<2>;
    case 3: return dense_row<3>;
    default: return dense_row<4>;
  }
}

static DenseConv dense_conv_of(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias,
                               int64_t stride, bool relu, int64_t out_h, int64_t out_w, const char* name) {
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && input.dim() == 4, name,
              ": a contiguous float32 NHWC input is expected");
  TORCH_CHECK(weight.is_contiguous() && weight.dim() == 4 && weight.size(2) == input.size(3), name,
              ": weight [KH, KW, Cin, Cout] expected");
  const int64_t cout = weight.size(3);
  TORCH_CHECK(cout % kLanes == 0 && cout >= kLanes, name, ": output channels must be whole vectors");
  TORCH_CHECK(bias.numel() == cout && bias.is_contiguous(), name, ": bias shape");
  const int64_t hp = input.size(1), wp = input.size(2), kh = weight.size(0), kw = weight.size(1);
  TORCH_CHECK((out_h - 1) * stride + kh <= hp && (out_w - 1) * stride + kw <= wp, name,
              ": output larger than the input allows");
  return DenseConv{input.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(), relu, hp, wp,
                   input.size(3), kh, kw, stride, out_w, cout};
}

void dense_conv_nhwc(torch::Tensor input,   // [N, Hp, Wp, Cin] float32 contiguous, zero-padded already
                     torch::Tensor weight,  // [KH, KW, Cin, Cout] float32 contiguous
                     torch::Tensor bias,    // [Cout] float32
                     int64_t stride, bool relu,
                     torch::Tensor out) {   // [N, OH, OW, Cout] float32 contiguous
  TORCH_CHECK(out.is_contiguous() && out.dim() == 4 && out.size(0) == input.size(0) && out.size(3) == weight.size(3),
              "dense_conv_nhwc: output shape");
  const int64_t out_h = out.size(1), out_w = out.size(2), cout = out.size(3);
  const DenseConv conv = dense_conv_of(input, weight, bias, stride, relu, out_h, out_w, "dense_conv_nhwc");
  const auto row_of = dense_row_for(cout / kLanes);
  float* y = out.data_ptr<float>();
  at::parallel_for(0, input.size(0) * out_h, 1, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) row_of(conv, r / out_h, r % out_h, y + r * out_w * cout);
  });
}

// The stem's conv (ReLU included: values >= 0, so the pool's zero padding never wins over a window's
// real values) and its max pool in one pass, the pool written in NCHW for the blocks: each thread
// keeps the last `kernel` conv rows of an image (channels-last) and pools them as soon as a pooled
// row's window is complete. Apart, the conv's output went to memory and back (51 MB at batch 16 for
// ResNet-50's stem).
void dense_conv_pool(torch::Tensor input,   // [N, Hp, Wp, Cin] float32 contiguous, zero-padded already
                     torch::Tensor weight,  // [KH, KW, Cin, Cout] float32 contiguous
                     torch::Tensor bias,    // [Cout] float32
                     int64_t stride, int64_t conv_h, int64_t conv_w,
                     int64_t kernel, int64_t pool_stride, int64_t pool_pad,
                     torch::Tensor out) {   // [N, Cout, PH, PW] float32 contiguous
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.dim() == 4 &&
                  out.size(0) == input.size(0) && out.size(1) == weight.size(3),
              "dense_conv_pool: output shape");
  TORCH_CHECK(kernel >= 1 && pool_stride >= 1 && 0 <= pool_pad && 2 * pool_pad < kernel, "dense_conv_pool: pool");
  const DenseConv conv = dense_conv_of(input, weight, bias, stride, true, conv_h, conv_w, "dense_conv_pool");
  const int64_t c = weight.size(3), out_h = out.size(2), out_w = out.size(3);
  TORCH_CHECK((out_h - 1) * pool_stride - pool_pad < conv_h && (out_w - 1) * pool_stride - pool_pad < conv_w,
              "dense_conv_pool: pooled output larger than the conv's allows");
  const auto row_of = dense_row_for(c / kLanes);
  float* y = out.data_ptr<float>();
  at::parallel_for(0, input.size(0) * out_h, 1, [&](int64_t first, int64_t last) {
    std::vector<float> rows(static_cast<size_t>(kernel * conv_w * c));  // conv row cy in slot cy % kernel
    std::vector<int64_t> held(static_cast<size_t>(kernel), -1);          // (image, row) in each slot
    std::vector<float> scratch(static_cast<size_t>(out_w * c));
    for (int64_t r = first; r < last; ++r) {
      const int64_t img = r / out_h, oy = r - img * out_h;
      const int64_t y0 = std::max<int64_t>(0, oy * pool_stride - pool_pad);
      const int64_t y1 = std::min(conv_h, oy * pool_stride - pool_pad + kernel);
      for (int64_t cy = y0; cy < y1; ++cy) {
        const int64_t slot = cy % kernel;
        if (held[slot] != img * conv_h + cy) {
          row_of(conv, img, cy, rows.data() + slot * conv_w * c);
          held[slot] = img * conv_h + cy;
        }
      }
      for (int64_t ox = 0; ox < out_w; ++ox) {
        const int64_t x0 = std::max<int64_t>(0, ox * pool_stride - pool_pad);
        const int64_t x1 = std::min(conv_w, ox * pool_stride - pool_pad + kernel);
        float* m = scratch.data() + ox * c;
        std::fill(m, m + c, 0.0f);
        for (int64_t cy = y0; cy < y1; ++cy)
          for (int64_t cx = x0; cx < x1; ++cx) {
            const float* v = rows.data() + ((cy % kernel) * conv_w + cx) * c;
#pragma omp simd
            for (int64_t k = 0; k < c; ++k) m[k] = std::max(m[k], v[k]);
          }
      }
      for (int64_t k = 0; k < c; ++k) {
        float* dst = y + ((img * c + k) * out_h + oy) * out_w;
        for (int64_t ox = 0; ox < out_w; ++ox) dst[ox] = scratch[ox * c + k];
      }
    }
  });
}

// One sparse conv as the kernel reads it: a KernelLayout (kept weights by chunk of input planes,
// then output channel) and what follows the sums (bias, ReLU).
struct SparseConv {
  // [chunks, out_channels * shifts + 1]; with shifts > 1 (see compute_tile_shifted_of), output channel
  // co's weights of column shift s are [rowptr[co * shifts + s], rowptr[co * shifts + s + 1])
  const int64_t* rowptr;
  // weight k: offset off[2 k], value val[2 k] (pairs interleaved in one array: val = off + 1, as floats)
  const int32_t* off;
  const float* val;
  const float* bias;  // or nullptr
  bool relu;
  int64_t chunks, out_channels, chunk_planes, halo, max_offset, planes, plane_stride;
  int64_t shifts = 1;
};

static SparseConv sparse_conv_of(const torch::Tensor& rowptr, const torch::Tensor& offsets, const torch::Tensor& values,
                                 const torch::Tensor& bias, bool relu, int64_t chunk_planes, int64_t halo,
                                 int64_t max_offset, int64_t planes, int64_t plane_stride, int64_t shifts = 1) {
  TORCH_CHECK(offsets.dtype() == torch::kInt32 && rowptr.dtype() == torch::kInt64 && values.dtype() == torch::kFloat32,
              "sparse conv: index and value types");
  TORCH_CHECK(rowptr.is_contiguous() && offsets.is_contiguous() && values.is_contiguous() && rowptr.dim() == 2,
              "sparse conv: contiguous layout expected");
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(1) == 2 && values.data_ptr() == offsets.data_ptr(),
              "sparse conv: (offset, value) pairs expected, offsets and values the same [kept, 2] storage");
  TORCH_CHECK(shifts >= 1 && (rowptr.size(1) - 1) % shifts == 0, "sparse conv: row pointers per shift");
  const int64_t out_channels = (rowptr.size(1) - 1) / shifts;
  TORCH_CHECK(bias.numel() == 0 || bias.numel() == out_channels, "sparse conv: bias shape");
  return SparseConv{rowptr.data_ptr<int64_t>(), offsets.data_ptr<int32_t>(), values.data_ptr<float>() + 1,
                    bias.numel() ? bias.data_ptr<float>() : nullptr, relu, rowptr.size(0), out_channels,
                    chunk_planes, halo, max_offset, planes, plane_stride, shifts};
}

// Where the outputs of a computed span go. The span's output t lies at row t / wq, column t % wq of
// the input's width; with img = row / hq and oy = row % hq (images stacked in a plane), output
// channel co's value is kept when oy < out_h and the column < out_w, stored at
// base + co * plane + (img * rows + oy) * row + column, its residual read at
// res + co * res_plane + (img * out_h + oy) * out_w + column. `consecutive`: output t at
// base + co * plane + t (the residual likewise), stored straight from the registers.
struct Dest {
  float* base;
  int64_t plane, row, rows;
  const float* res;  // or nullptr
  int64_t res_plane;
  int64_t wq, hq, out_h, out_w;
  bool consecutive, stream;
  int64_t skip = 0;  // the span's first `skip` outputs are not written (output t is at position t - skip)
};

// registers per tile for a span: the fewest outputs computed in all (a tile past the span's end is
// moved back over the tile before it), then the longest tiles
static int vectors_per_tile(int64_t span, int cap = kVectors) {
  const int64_t vectors = (span + kLanes - 1) / kLanes;
  const int most = static_cast<int>(std::min<int64_t>(cap, vectors));
  int nv = most;
  int64_t least = (vectors + most - 1) / most * most;
  for (int candidate = most - 1; candidate >= std::max(1, most / 2); --candidate) {
    const int64_t computed = (vectors + candidate - 1) / candidate * candidate;
    if (computed < least) {
      least = computed;
      nv = candidate;
    }
  }
  return nv;
}

// a tile of a span: its first output, length, and whether its vectors may all be read in full
struct Tile {
  int64_t t0, len;
  bool full;
};

// tile `i` of a span whose input has `readable` floats from the span's first output's position on;
// `reach`: how far past its first output a tile's reads go, beyond its own length
static Tile tile_at(int64_t i, int64_t tile_len, int64_t span, int64_t readable, int64_t reach) {
  Tile t{i * tile_len, tile_len, false};
  t.full = t.t0 + tile_len + reach <= readable;
  if (!t.full && span >= tile_len && span + reach <= readable) {  // end the tile at the span (outputs
    t.t0 = span - tile_len;  // shared with the tile before are computed twice, equally)
    t.full = true;
  } else if (!t.full) {
    t.len = span - t.t0;
  }
  return t;
}

// The rows of the next chunk of a tile (`tile`: the tile's input), or the next tile's first chunk
// (`next`) during a tile's last, prefetched a share before each of `channels` output channels: the
// hardware's prefetchers follow a few streams, a chunk is up to a few dozen planes. Measured on
// ResNet-50 at batch 16 here: 5 % faster at 95 % sparsity, no change at 90 % (+0.8 %, within the noise).
struct ChunkPrefetch {
  const float* ahead = nullptr;  // planes [plane, ...) from here
  int64_t plane_stride, lines_per_plane, lines = 0, per_channel = 0;
  // the next line: line `in_plane` of plane `plane` (counted, not divided: a division per prefetched
  // line cost more than the prefetch)
  int64_t line = 0, plane = 0, in_plane = 0;

  ChunkPrefetch(const SparseConv& c, int64_t ch, const float* tile, const float* next, int64_t lines_per_plane,
                int64_t channels)
      : plane_stride(c.plane_stride), lines_per_plane(lines_per_plane) {
    if (ch + 1 < c.chunks) {
      ahead = tile;
      plane = (ch + 1) * c.chunk_planes;
    } else {
      ahead = next;
    }
    if (ahead) lines = (std::min(c.planes, plane + c.chunk_planes) - plane) * lines_per_plane;
    per_channel = (lines + channels - 1) / channels;
  }

  void share() {
    for (const int64_t line_end = std::min(lines, line + per_channel); line < line_end; ++line) {
      __builtin_prefetch(ahead + plane * plane_stride + in_plane * 16, 0, 3);
      if (++in_plane == lines_per_plane) {
        in_plane = 0;
        ++plane;
      }
    }
  }
};

// Write a tile's outputs that exist (t < span, column < out_w) from its sums, a row segment at a time;
// the segments (the same for every output channel) found once per tile: with two divisions each,
// found per output channel they cost about as much as a sparse conv's multiply-adds on small planes
static void write_tile(const SparseConv& c, const Dest& d, int64_t span, int64_t t0, int64_t len, int64_t co_begin,
                       int64_t co_end, const float* sums_base) {
  const int64_t t_end = std::min(t0 + len, span);
  struct Segment {
    int64_t from, count, dst, res;  // sums index, outputs, offset in the output's plane and the residual's
  };
  Segment segments[kTile + 2];  // a tile of kTile outputs spans at most kTile rows (+ the skip)
  int n_segments = 0;
  for (int64_t t = std::max(t0, d.skip); t < t_end;) {
    const int64_t u = t - d.skip;  // the output's position
    const int64_t row = u / d.wq, ox = u - row * d.wq;  // row of the stacked plane
    const int64_t img = row / d.hq, oy = row - img * d.hq;  // stacked image, its output row
    const int64_t row_end = std::min(t_end, (row + 1) * d.wq + d.skip);
    const int64_t count = std::min(row_end, row * d.wq + d.out_w + d.skip) - t;
    if (count > 0 && oy < d.out_h)
      segments[n_segments++] = {t - t0, count, (img * d.rows + oy) * d.row + ox, (img * d.out_h + oy) * d.out_w + ox};
    t = row_end;
  }
  for (int64_t co = co_begin; co < co_end; ++co) {
    const float* sums = sums_base + co * kTile;
    const float shift = c.bias ? c.bias[co] : 0.0f;
    float* dst = d.base + co * d.plane;
    const float* res = d.res ? d.res + co * d.res_plane : nullptr;
    for (int i = 0; i < n_segments; ++i) {
      const Segment& g = segments[i];
      write_out(dst + g.dst, sums + g.from, res ? res + g.res : nullptr, g.count, shift, c.relu);
    }
  }
}

// One tile of output channels [co_begin, co_end): the input channels chunk by chunk, the sums kept
// in `sums_base` (a tile's worth per output channel) between chunks, then written out. `in`: the
// span's first output's position in the input (the start of an image's planes); `next`: the next
// tile's input, prefetched during this tile's last chunk, or nullptr.
template <int NV>
static void compute_tile_of(const SparseConv& c, const Dest& d, const float* in, int64_t span, const Tile& tile, int nv,
                         int64_t co_begin, int64_t co_end, const float* next, float* sums_base) {
  const int64_t t0 = tile.t0, len = tile.len, tile_len = nv * kLanes;
  const bool full = tile.full;
  const float* base = in + t0;
  // outputs consecutive in the output: the last chunk stores them itself
  const bool straight = d.consecutive && full && t0 + tile_len <= span;
  // chunk c's rows prefetched while the chunk before is computed (see ChunkPrefetch)
  const int64_t lines_per_plane = c.chunk_planes > 0 ? (tile_len + c.halo + 15) / 16 + 1 : 0;  // 64-byte lines
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    const int64_t* cp = c.rowptr + ch * (c.out_channels + 1);
    const bool last_chunk = ch + 1 == c.chunks;
    ChunkPrefetch prefetch(c, ch, full ? base : nullptr, next, lines_per_plane, co_end - co_begin);
    for (int64_t co = co_begin; co < co_end; ++co) {
      prefetch.share();
      float* sums = sums_base + co * kTile;
      if (straight && last_chunk) {
        float* dst = d.base + co * d.plane + t0;
        accumulate_tile<NV>(base, c.off, c.val, cp[co], cp[co + 1], sums, ch == 0, dst,
                   d.res ? d.res + co * d.res_plane + t0 : nullptr, c.bias ? c.bias[co] : 0.0f, c.relu,
                   d.stream && reinterpret_cast<uintptr_t>(dst) % sizeof(vec) == 0);
      } else if (full) {
        accumulate_tile<NV>(base, c.off, c.val, cp[co], cp[co + 1], sums, ch == 0, nullptr, nullptr, 0.0f, false, false);
      } else {
        accumulate_short(base, c.off, c.val, cp[co], cp[co + 1], len, sums, ch == 0);
      }
    }
  }
  if (straight) return;
  write_tile(c, d, span, t0, len, co_begin, co_end, sums_base);
}

// compute_tile_of for `nv` registers per tile: the multiply-adds inlined in its loop over the
// output channels (a call per output channel and chunk cost 4 % in a micro-benchmark)
static void compute_tile(const SparseConv& c, const Dest& d, const float* in, int64_t span, const Tile& tile, int nv,
                         int64_t co_begin, int64_t co_end, const float* next, float* sums_base) {
#define CVLTH_CASE(N) \
  case N: return compute_tile_of<N>(c, d, in, span, tile, nv, co_begin, co_end, next, sums_base);
  switch (nv) {
    CVLTH_CASE(1) CVLTH_CASE(2) CVLTH_CASE(3) CVLTH_CASE(4) CVLTH_CASE(5) CVLTH_CASE(6) CVLTH_CASE(7)
    CVLTH_CASE(8) CVLTH_CASE(9) CVLTH_CASE(10) CVLTH_CASE(11) CVLTH_CASE(12) CVLTH_CASE(13) CVLTH_CASE(14)
    CVLTH_CASE(15)
    default:
      return compute_tile_of<kVectors>(c, d, in, span, tile, nv, co_begin, co_end, next, sums_base);
  }
#undef CVLTH_CASE
}

#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
// A 3-wide conv (column shifts 0, 1, 2) whose input rows start on a vector: the weights of column
// shift s read their input at s floats past a vector boundary, and such a load spans two cache lines
// (costing two: in a micro-benchmark here, 62 GFLOP/s per core unaligned against 92 aligned). So each
// shift has its own sums, fed by aligned loads (shift s's sum vector i holds outputs 16 i - s to
// 16 i - s + 15, one vector more than the tile), and the three are added with their lanes aligned
// (valignd) once per output channel and chunk, not once per multiply-add.
constexpr int kShifts = 3;
constexpr int kShiftedVectors = 9;  // 3 sets of sums, 9 + 10 + 10 registers, and the broadcast weight
bool shifted_available() { return true; }
int64_t shifted_tile_floats() { return kShiftedVectors * kLanes; }

template <int N>
__attribute__((always_inline)) static inline void accumulate_shift(__m512* acc, const float* base, const int32_t* off,
                                                                    const float* val, int64_t begin, int64_t end,
                                                                    int64_t shift) {
  for (int64_t k = begin; k < end; ++k) {
    const float* p = base + off[2 * k] - shift;
    asm volatile("" : "+r"(p));  // [p + constant] in each multiply-add (see accumulate_tile)
    const __m512 v = _mm512_set1_ps(val[2 * k]);
#pragma GCC unroll 16
    for (int i = 0; i < N; ++i) acc[i] = _mm512_fmadd_ps(v, _mm512_loadu_ps(p + i * kLanes), acc[i]);
  }
}

static inline __m512 lanes_from(__m512 lo, __m512 hi, int shift) {  // lanes shift.. of lo, then hi's
  const __m512i a = _mm512_castps_si512(lo), b = _mm512_castps_si512(hi);
  return _mm512_castsi512_ps(shift == 1 ? _mm512_alignr_epi32(b, a, 1) : _mm512_alignr_epi32(b, a, 2));
}

template <int NV>
static void compute_tile_shifted_of(const SparseConv& c, const Dest& d, const float* in, int64_t span,
                                    const Tile& tile, int nv, int64_t co_begin, int64_t co_end, const float* next,
                                    float* sums_base) {
  const int64_t t0 = tile.t0, len = tile.len, tile_len = nv * kLanes;
  const float* base = in + t0;
  const int64_t lines_per_plane = c.chunk_planes > 0 ? (tile_len + kLanes + c.halo + 15) / 16 + 1 : 0;
  for (int64_t ch = 0; ch < c.chunks; ++ch) {
    const int64_t* cp = c.rowptr + ch * (c.out_channels * kShifts + 1);
    ChunkPrefetch prefetch(c, ch, tile.full ? base : nullptr, next, lines_per_plane, co_end - co_begin);
    for (int64_t co = co_begin; co < co_end; ++co) {
      prefetch.share();
      float* sums = sums_base + co * kTile;
      const int64_t* at = cp + co * kShifts;
      if (!tile.full) {  // every shift's weights read as they are
        accumulate_short(base, c.off, c.val, at[0], at[kShifts], len, sums, ch == 0);
        continue;
      }
      __m512 acc0[NV], acc1[NV + 1], acc2[NV + 1];
#pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) acc0[i] = ch == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(sums + i * kLanes);
#pragma GCC unroll 16
      for (int i = 0; i <= NV; ++i) acc1[i] = acc2[i] = _mm512_setzero_ps();
      accumulate_shift<NV>(acc0, base, c.off, c.val, at[0], at[1], 0);
      accumulate_shift<NV + 1>(acc1, base, c.off, c.val, at[1], at[2], 1);
      accumulate_shift<NV + 1>(acc2, base, c.off, c.val, at[2], at[3], 2);
#pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) {
        const __m512 y = acc0[i] + lanes_from(acc1[i], acc1[i + 1], 1) + lanes_from(acc2[i], acc2[i + 1], 2);
        _mm512_storeu_ps(sums + i * kLanes, y);
      }
    }
  }
  write_tile(c, d, span, t0, len, co_begin, co_end, sums_base);
}

static void compute_tile_shifted(const SparseConv& c, const Dest& d, const float* in, int64_t span, const Tile& tile,
                                 int nv, int64_t co_begin, int64_t co_end, const float* next, float* sums_base) {
#define CVLTH_CASE(N) \
  case N: return compute_tile_shifted_of<N>(c, d, in, span, tile, nv, co_begin, co_end, next, sums_base);
  switch (nv) {
    CVLTH_CASE(1) CVLTH_CASE(2) CVLTH_CASE(3) CVLTH_CASE(4) CVLTH_CASE(5) CVLTH_CASE(6) CVLTH_CASE(7)
    CVLTH_CASE(8)
    default:
      return compute_tile_shifted_of<kShiftedVectors>(c, d, in, span, tile, nv, co_begin, co_end, next, sums_base);
  }
#undef CVLTH_CASE
}

#else
constexpr int kShifts = 3;
bool shifted_available() { return false; }
int64_t shifted_tile_floats() { return kTile; }
static void compute_tile_shifted(const SparseConv&, const Dest&, const float*, int64_t, const Tile&, int, int64_t,
                                 int64_t, const float*, float*) {
  TORCH_CHECK(false, "the column-shifted conv needs AVX-512");
}
constexpr int kShiftedVectors = kVectors;
#endif

void sparse_conv_forward(
    torch::Tensor input,     // [N, P, Hq, Wq] float32 contiguous: padded (and phased) input planes
    torch::Tensor rowptr,    // [chunks, Cout + 1] int64: chunk c, output channel co: its weights
    torch::Tensor offsets,   // [nnz, 2] int32: (plane * Hq * Wq + row shift * Wq + column shift, value bits)
    torch::Tensor values,    // the same [nnz, 2] storage as float32
    torch::Tensor bias,      // [Cout] float32, or empty
    bool relu,               // max(0, .) last
    int64_t out_h, int64_t out_w,  // of one image
    torch::Tensor out,       // [N, Cout, stack * (out_h + 2 pad), out_w + 2 pad] float32 contiguous
    int64_t pad,             // the output's zero border (left as it is)
    torch::Tensor residual,  // [N, Cout, stack * out_h, out_w] float32 contiguous, or empty: added before the ReLU
    int64_t max_offset,      // the largest offset
    int64_t stack,           // images stacked along the rows of each plane (channel-major layout), or 1
    int64_t chunk_planes,    // input planes per chunk (0: no prefetching)
    int64_t halo,            // floats a tile reads in a plane beyond its own outputs' positions
    int64_t shifts) {        // 1, or 3: a 3-wide conv by column shift (see compute_tile_shifted_of)
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && input.dim() == 4,
              "sparse_conv_forward: a contiguous float32 NCHW input is expected");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous(), "sparse_conv_forward: bad output");
  const int64_t n_images = input.size(0), wq = input.size(3);
  TORCH_CHECK(stack >= 1 && input.size(2) % stack == 0, "sparse_conv_forward: rows not a multiple of the stack");
  const int64_t hq = input.size(2) / stack;  // input rows of one stacked image
  const int64_t image = input.size(1) * input.size(2) * wq, total = input.numel();
  TORCH_CHECK(shifts == 1 || shifts == kShifts, "sparse_conv_forward: shifts");
  const SparseConv conv = sparse_conv_of(rowptr, offsets, values, bias, relu, chunk_planes, halo, max_offset,
                                         input.size(1), input.size(2) * wq, shifts);
  const bool shifted = shifts > 1;
  const int64_t out_channels = conv.out_channels;
  const int64_t oh = out_h + 2 * pad, ow = out_w + 2 * pad;
  TORCH_CHECK(out.size(0) == n_images && out.size(1) == out_channels &&
                  out.size(2) == stack * oh && out.size(3) == ow,
              "sparse_conv_forward: output shape");
  TORCH_CHECK(residual.numel() == 0 || residual.numel() == n_images * out_channels * stack * out_h * out_w,
              "sparse_conv_forward: residual shape");
  // outputs over the padded width and, between stacked images, over their padding rows (computed,
  // never written); the last image's last row cut
  const int64_t span = ((stack - 1) * hq + out_h - 1) * wq + out_w;
  const int nv = vectors_per_tile(span, shifted ? kShiftedVectors : kVectors);
  const int64_t reach = max_offset + (shifted ? kLanes : 0);  // shifted: sums a vector past the tile
  const int64_t tile_len = nv * kLanes;
  const int64_t tiles = (span + tile_len - 1) / tile_len;
  const float* x = input.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const float* r = residual.numel() ? residual.data_ptr<float>() : nullptr;
  const int64_t plane_out = stack * out_h * out_w, plane_padded = stack * oh * ow;
  // output position t is output element t
  const bool consecutive = wq == out_w && pad == 0 && (stack == 1 || hq == out_h);
  const bool stream = out.numel() * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
  const Dest image_dest{y + pad * ow + pad, plane_padded, ow, oh, r, plane_out, wq, hq, out_h, out_w, consecutive,
                        stream};

  // blocks of (image, tile, group of output channels): the channels are split in groups only when
  // there are too few (image, tile) pairs for every thread to have a few (a small batch)
  const int64_t pairs = n_images * tiles, threads = at::get_num_threads();
  const int64_t groups = std::min<int64_t>(out_channels, std::max<int64_t>(1, (4 * threads + pairs - 1) / pairs));
  const int64_t group_size = (out_channels + groups - 1) / groups;
  auto tile_of = [&](int64_t pair) {
    const int64_t n = pair / tiles;
    return tile_at(pair % tiles, tile_len, span, total - n * image, reach);
  };
  at::parallel_for(0, pairs * groups, 1, [&](int64_t first, int64_t last) {
    float* const sums_base = scratch(kSums, out_channels * kTile);
    for (int64_t block = first; block < last; ++block) {
      const int64_t pair = block / groups, group = block % groups;
      const int64_t co_begin = group * group_size, co_end = std::min(out_channels, co_begin + group_size);
      if (co_begin >= co_end) continue;  // the last groups of a rounded-up split
      const int64_t n = pair / tiles;
      const Tile tile = tile_of(pair);
      const float* next = nullptr;  // the next block's tile, prefetched during this one's last chunk
      if (block + 1 < last) {
        const int64_t next_pair = (block + 1) / groups;
        const Tile following = tile_of(next_pair);
        if (following.full) next = x + (next_pair / tiles) * image + following.t0;
      }
      Dest d = image_dest;
      d.base += n * out_channels * plane_padded;
      if (r) d.res += n * out_channels * plane_out;
      if (shifted)
        compute_tile_shifted(conv, d, x + n * image, span, tile, nv, co_begin, co_end, next, sums_base);
      else
        compute_tile(conv, d, x + n * image, span, tile, nv, co_begin, co_end, next, sums_base);
    }
#ifdef CVLTH_X86
    if (stream) _mm_sfence();  // the streamed stores visible before the output is read
#endif
  });
}

// One conv over a span of its input into `d`, tile after tile, every output channel, on this thread
// (a band of a block: the threads split the bands).
static void run_span(const SparseConv& c, const Dest& d, const float* in, int64_t span, int64_t readable, float* sums) {
  const bool shifted = c.shifts > 1;
  const int nv = vectors_per_tile(span, shifted ? kShiftedVectors : kVectors);
  const int64_t tile_len = nv * kLanes, tiles = (span + tile_len - 1) / tile_len;
  const int64_t reach = c.max_offset + (shifted ? kLanes : 0);  // shifted: sums a vector past the tile
  for (int64_t i = 0; i < tiles; ++i) {
    const Tile tile = tile_at(i, tile_len, span, readable, reach);
    const float* next = nullptr;
    if (i + 1 < tiles) {
      const Tile following = tile_at(i + 1, tile_len, span, readable, reach);
      if (following.full) next = in + following.t0;
    }
    if (shifted)
      compute_tile_shifted(c, d, in, span, tile, nv, 0, c.out_channels, next, sums);
    else
      compute_tile(c, d, in, span, tile, nv, 0, c.out_channels, next, sums);
  }
}

// A 1x1 conv (no padding, stride 1) on `rows` rows of `w` pixels of an NCHW input `x` (`total`
// floats), from its element `first` on, into `base` (output channel co's row r at base + co * plane +
// r * row). Computed from the vector-aligned position before `first`, the outputs before it not
// written: every load of its tiles is then aligned (a load that spans two cache lines costs two).
static void pointwise_rows(const SparseConv& c, const float* x, int64_t total, int64_t first, int64_t rows, int64_t w,
                           float* base, int64_t plane, int64_t row, float* sums) {
  const int64_t skip = first % kLanes, start = first - skip;
  Dest d{base, plane, row, 0, nullptr, 0, w, rows, rows, w, false, false};
  d.skip = skip;
  run_span(c, d, x + start, rows * w + skip, total - start, sums);
}

// How the band kernels' threads split the work: whole images, or at a small batch (fewer images than
// threads) segments of an image's `rows` output rows; (segments per image, rows per segment)
static std::pair<int64_t, int64_t> row_segments(int64_t rows, int64_t n_images) {
  const int64_t threads = at::get_num_threads();
  const int64_t segments = std::min(rows, std::max<int64_t>(1, (threads + n_images - 1) / n_images));
  return {segments, (rows + segments - 1) / segments};
}

// A bottleneck block (1x1, k x k with padding `pad`, 1x1; stride 1; the residual added and the ReLU
// applied by the last conv) computed a band of rows at a time: each thread takes whole images (or
// segments of rows of one, at a small batch) and runs the three convs on `band` output rows before
// the next band, so the two narrow activations never leave the core's L2 and the block's input
// and output cross memory once each. Run layer after layer, a layer1 block of ResNet-50 at batch
// 16 moves ~200 MB through memory. The first conv's rows are computed once: the `2 pad` rows the
// next band shares with this one are moved to the top of its buffer.
void bottleneck_bands(torch::Tensor input,     // [N, C, H, W] float32 contiguous
                      std::vector<torch::Tensor> rowptrs, std::vector<torch::Tensor> offsets,
                      std::vector<torch::Tensor> values, std::vector<torch::Tensor> biases,
                      std::vector<int64_t> chunk_planes, std::vector<int64_t> halos,
                      std::vector<int64_t> max_offsets,  // of the three convs' layouts: for input planes of
                                                         // H x W, (band + 2 pad) x (W + 2 pad), band x W
                      int64_t pad, int64_t band,
                      torch::Tensor residual,  // [N, Cout, H, W] float32 contiguous, or empty (`carried`)
                      torch::Tensor out,       // [N, Cout, H, W] float32 contiguous, or [Cout, N, H, W]:
                      bool channel_major_out,  // (the next block runs channel-major, see FusedBlock)
                      bool carried,  // the last conv reads the band's input rows beside conv 2's output
                                     // (a block's last conv and its downsample as one conv): no residual
                      int64_t row_stride,  // of conv 2's input buffer: W + 2 pad or more (a vector multiple)
                      bool shifted) {  // conv 2 (3 wide) by column shift (see compute_tile_shifted_of)
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && input.dim() == 4,
              "bottleneck_bands: a contiguous float32 NCHW input is expected");
  TORCH_CHECK(rowptrs.size() == 3 && offsets.size() == 3 && values.size() == 3 && biases.size() == 3 &&
                  chunk_planes.size() == 3 && halos.size() == 3 && max_offsets.size() == 3,
              "bottleneck_bands: three convs expected");
  TORCH_CHECK(band >= 1 && pad >= 0, "bottleneck_bands: band and padding");
  const int64_t n_images = input.size(0), h = input.size(2), w = input.size(3);
  TORCH_CHECK(row_stride >= w + 2 * pad && (!shifted || pad == 1), "bottleneck_bands: row stride, shifts");
  const int64_t hb = band + 2 * pad, wb = row_stride;  // the middle conv's input buffer planes
  const int64_t c_in = input.size(1), beside = carried ? c_in : 0;  // input planes beside conv 2's output
  const int64_t in_sizes[3][2] = {{c_in, h * w}, {rowptrs[0].size(1) - 1, hb * wb},
                                  {rowptrs[1].size(1) - 1 + beside, band * w}};
  SparseConv convs[3];
  for (int i = 0; i < 3; ++i)
    convs[i] = sparse_conv_of(rowptrs[i], offsets[i], values[i], biases[i], true, chunk_planes[i], halos[i],
                              max_offsets[i], in_sizes[i][0], in_sizes[i][1], i == 1 && shifted ? kShifts : 1);
  const int64_t c1 = convs[0].out_channels, c2 = convs[1].out_channels, c3 = convs[2].out_channels;
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.dim() == 4 &&
                  out.size(channel_major_out ? 1 : 0) == n_images && out.size(channel_major_out ? 0 : 1) == c3 &&
                  out.size(2) == h && out.size(3) == w,
              "bottleneck_bands: output shape");
  TORCH_CHECK(carried ? residual.numel() == 0
                      : residual.dtype() == torch::kFloat32 && residual.is_contiguous() && residual.dim() == 4 &&
                            residual.size(0) == n_images && residual.size(1) == c3 && residual.size(2) == h &&
                            residual.size(3) == w,
              "bottleneck_bands: residual shape (none with `carried`)");
  for (int i = 0; i < 3; ++i)  // every weight's input inside a plane of its conv's input
    TORCH_CHECK(convs[i].max_offset < in_sizes[i][0] * in_sizes[i][1], "bottleneck_bands: offsets of conv ", i + 1);
  const float* x = input.data_ptr<float>();
  const float* res = carried ? nullptr : residual.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t image = input.size(1) * h * w, total = input.numel(), plane = h * w;
  const bool stream = out.numel() * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
  // a tile may read past its span's end inside a buffer: room for it, zeros
  const int64_t slack = kTile + std::max(convs[1].halo, convs[2].halo) + 2 * kLanes;
  const int64_t mid1_floats = c1 * hb * wb + slack, mid2_floats = (c2 + beside) * band * w + slack;
  const auto [segments, segment_rows] = row_segments(h, n_images);

  at::parallel_for(0, n_images * segments, 1, [&](int64_t first, int64_t last) {
    float* const sums = scratch(kSums, std::max({c1, c2, c3}) * kTile);
    float* const mid1 = scratch(kMiddle, mid1_floats);
    std::fill(mid1, mid1 + mid1_floats, 0.0f);  // its borders and slack: zeros, never written
    float* const mid2 = scratch(kLast, mid2_floats);  // its slack only feeds outputs past a span
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t n = unit / segments, s0 = (unit % segments) * segment_rows;
      const int64_t s1 = std::min(h, s0 + segment_rows);
      for (int64_t r0 = s0; r0 < s1; r0 += band) {
        const int64_t r1 = std::min(s1, r0 + band), rows = r1 - r0;
        // buffer row j holds image row r0 - pad + j, rows [0, rows + 2 pad) of it for this band
        int64_t from = r0 - pad;  // the first image row this band's conv 1 computes
        if (r0 > s0) {            // the rows shared with the band before, moved up
          for (int64_t k = 0; k < c1; ++k)
            std::memmove(mid1 + k * hb * wb, mid1 + k * hb * wb + band * wb, sizeof(float) * 2 * pad * wb);
          from = r0 + pad;
        }
        const int64_t a = std::max<int64_t>(0, from), b = std::min(h, r1 + pad);
        for (int64_t k = 0; k < c1; ++k) {  // rows outside the image: the middle conv's zero padding
          float* p = mid1 + k * hb * wb;
          for (int64_t row = from; row < r1 + pad; ++row)
            if (row < 0 || row >= h) std::fill(p + (row - (r0 - pad)) * wb, p + (row - (r0 - pad) + 1) * wb, 0.0f);
        }
        if (b > a)  // conv 1: image rows [a, b) into the buffer's interior
          pointwise_rows(convs[0], x, total, n * image + a * w, b - a, w, mid1 + (a - (r0 - pad)) * wb + pad,
                         hb * wb, wb, sums);
        {  // conv 2 over the buffer's padded width into mid2 ([c2, band, w])
          const Dest d{mid2, band * w, w, 0, nullptr, 0, wb, rows, rows, w, false, false};
          run_span(convs[1], d, mid1, (rows - 1) * wb + w, mid1_floats, sums);
        }
        for (int64_t k = 0; k < beside; ++k)  // the band's input rows, after conv 2's output
          std::memcpy(mid2 + (c2 + k) * band * w, x + n * image + k * plane + r0 * w, sizeof(float) * rows * w);
        {  // conv 3, the residual and the ReLU, into the output's rows [r0, r1)
          const int64_t at = n * c3 * plane + r0 * w;
          const int64_t out_at = channel_major_out ? n * plane + r0 * w : at;
          const int64_t out_plane = channel_major_out ? n_images * plane : plane;
          const Dest d{y + out_at, out_plane, w, 0, res ? res + at : nullptr, plane, w, rows, rows, w, true, stream};
          run_span(convs[2], d, mid2, rows * w, mid2_floats, sums);
        }
      }
    }
#ifdef CVLTH_X86
    if (stream) _mm_sfence();
#endif
  });
}

// A row of `n` floats split into its even and its odd elements, each row then zero-filled to `width`
// (a stride-2 conv's column phases). Two vectors in, one permute per vector out: element by
// element, the split of a band's rows took a few percent of a strided block.
static void deinterleave_row(const float* src, int64_t n, float* even, float* odd, int64_t width) {
  int64_t i = 0;
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
  const __m512i even_lanes = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_lanes = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (; 2 * i + 2 * kLanes <= n; i += kLanes) {
    const __m512 a = _mm512_loadu_ps(src + 2 * i), b = _mm512_loadu_ps(src + 2 * i + kLanes);
    _mm512_storeu_ps(even + i, _mm512_permutex2var_ps(a, even_lanes, b));
    _mm512_storeu_ps(odd + i, _mm512_permutex2var_ps(a, odd_lanes, b));
  }
#endif
  for (; 2 * i < n; ++i) {
    even[i] = src[2 * i];
    if (2 * i + 1 < n) odd[i] = src[2 * i + 1];
  }
  std::fill(even + (n + 1) / 2, even + width, 0.0f);
  std::fill(odd + n / 2, odd + width, 0.0f);
}

// A strided bottleneck (a 1x1 conv, a 3x3 conv of stride 2 and padding 1, then its last 1x1 conv and
// its 1x1 downsample of stride 2 as one conv over both inputs, see FusedBlock) a band of output rows
// at a time. Per band, the first conv's rows go into a zero-bordered buffer, are split there into the
// stride's 2 x 2 phases (see split_phases) and read by the strided conv, whose rows go into the merged
// conv's input buffer beside the band's input rows at stride 2 (what the downsample reads), all in
// the core's L2: layer after layer, the first conv's output (4x the block's output) was written to
// memory, read and written again as phases and read once more, and the merged conv's input (the
// block's output size and more) written and read again.
void strided_front_bands(torch::Tensor input,  // [N, Cin, H, W] float32 contiguous
                         std::vector<torch::Tensor> rowptrs, std::vector<torch::Tensor> offsets,
                         std::vector<torch::Tensor> values, std::vector<torch::Tensor> biases,
                         std::vector<int64_t> chunk_planes, std::vector<int64_t> halos,
                         std::vector<int64_t> max_offsets,  // of the three convs' layouts: for input planes
                                                            // of H x W, 4 phases of (band + 1) x wq, band x Wo
                         int64_t band,
                         torch::Tensor out) {  // [N, Cout, Ho, Wo] float32 contiguous
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && input.dim() == 4,
              "strided_front_bands: a contiguous float32 NCHW input is expected");
  TORCH_CHECK(rowptrs.size() == 3 && offsets.size() == 3 && values.size() == 3 && biases.size() == 3 &&
                  chunk_planes.size() == 3 && halos.size() == 3 && max_offsets.size() == 3,
              "strided_front_bands: three convs expected");
  const int64_t n_images = input.size(0), c_in = input.size(1), h = input.size(2), w = input.size(3);
  const int64_t out_h = (h - 1) / 2 + 1, out_w = (w - 1) / 2 + 1;  // 3x3, stride 2, padding 1
  const int64_t wp = w + 2, wq = (wp + 1) / 2;  // the padded rows, a phase's rows
  const int64_t c1 = rowptrs[0].size(1) - 1;
  TORCH_CHECK(band >= 1, "strided_front_bands: band");
  const int64_t hp = 2 * band + 1, hq = band + 1;  // per band: padded rows of the first conv's output, phase rows
  const int64_t c2 = rowptrs[1].size(1) - 1;
  const int64_t in_sizes[3][2] = {{c_in, h * w}, {4 * c1, hq * wq}, {c2 + c_in, band * out_w}};
  SparseConv convs[3];
  for (int i = 0; i < 3; ++i)
    convs[i] = sparse_conv_of(rowptrs[i], offsets[i], values[i], biases[i], true, chunk_planes[i], halos[i],
                              max_offsets[i], in_sizes[i][0], in_sizes[i][1]);
  const int64_t c3 = convs[2].out_channels;
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous() && out.dim() == 4 && out.size(0) == n_images &&
                  out.size(1) == c3 && out.size(2) == out_h && out.size(3) == out_w,
              "strided_front_bands: output shape");
  for (int i = 0; i < 3; ++i)
    TORCH_CHECK(convs[i].max_offset < in_sizes[i][0] * in_sizes[i][1], "strided_front_bands: offsets of conv ", i + 1);
  const float* x = input.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t image = c_in * h * w, total = input.numel(), out_plane = out_h * out_w;
  const int64_t mid_floats = c1 * hp * wp;
  const int64_t slack = kTile + std::max(convs[1].halo, convs[2].halo) + kLanes;
  const int64_t phase_floats = 4 * c1 * hq * wq + slack;
  const int64_t merged_floats = (c2 + c_in) * band * out_w + slack;  // the last conv's input, per band
  const bool stream = out.numel() * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
  const auto [segments, segment_rows] = row_segments(out_h, n_images);

  at::parallel_for(0, n_images * segments, 1, [&](int64_t first, int64_t last) {
    float* const sums = scratch(kSums, std::max({c1, c2, c3}) * kTile);
    float* const mid = scratch(kMiddle, mid_floats);  // row j: padded row 2 r0 + j (image row 2 r0 + j - 1)
    std::fill(mid, mid + mid_floats, 0.0f);            // its border columns: zeros, never written
    float* const phases = scratch(kLast, phase_floats);
    std::fill(phases + phase_floats - slack, phases + phase_floats, 0.0f);
    float* const merged = scratch(kMerged, merged_floats);  // its slack only feeds outputs past a span
    for (int64_t unit = first; unit < last; ++unit) {
      const int64_t n = unit / segments, s0 = (unit % segments) * segment_rows;
      const int64_t s1 = std::min(out_h, s0 + segment_rows);
      for (int64_t r0 = s0; r0 < s1; r0 += band) {
        const int64_t r1 = std::min(s1, r0 + band), rows = r1 - r0;
        const int64_t lead = 2 * r0 - 1;  // the image row in mid's row 0
        int64_t from = lead;              // the first image row the first conv computes
        if (r0 > s0) {  // padded row 2 r0, the band before's last, moved up
          for (int64_t k = 0; k < c1; ++k) std::memmove(mid + k * hp * wp, mid + k * hp * wp + 2 * band * wp, sizeof(float) * wp);
          from = lead + 1;
        }
        const int64_t until = lead + 2 * rows + 1;  // image rows [from, until) go into mid
        for (int64_t k = 0; k < c1; ++k)  // rows outside the image: the strided conv's zero padding
          for (int64_t row = from; row < until; ++row)
            if (row < 0 || row >= h) std::fill(mid + (k * hp + row - lead) * wp, mid + (k * hp + row - lead + 1) * wp, 0.0f);
        const int64_t a = std::max<int64_t>(0, from), b = std::min(h, until);
        if (b > a)  // the first conv: image rows [a, b) into mid's interior
          pointwise_rows(convs[0], x, total, n * image + a * w, b - a, w, mid + (a - lead) * wp + 1, hp * wp, wp, sums);
        // the 2 x 2 phases of mid's rows [0, 2 rows + 1): phase (pa, pb) row j, column i is mid's
        // row 2 j + pa, column 2 i + pb (zero past mid's width or rows)
        for (int64_t k = 0; k < c1; ++k)
          for (int64_t pa = 0; pa < 2; ++pa) {
            float* even = phases + (pa * 2 * c1 + k) * hq * wq;  // phase (pa, 0)
            float* odd = phases + ((pa * 2 + 1) * c1 + k) * hq * wq;  // phase (pa, 1)
            for (int64_t j = 0; j <= rows; ++j) {
              const int64_t mrow = 2 * j + pa;
              if (mrow >= 2 * rows + 1) {
                std::fill(even + j * wq, even + (j + 1) * wq, 0.0f);
                std::fill(odd + j * wq, odd + (j + 1) * wq, 0.0f);
                continue;
              }
              deinterleave_row(mid + (k * hp + mrow) * wp, wp, even + j * wq, odd + j * wq, wq);
            }
          }
        {  // the strided conv into the merged conv's input planes [0, c2) ([c2 + Cin, band, Wo])
          const Dest d{merged, band * out_w, out_w, 0, nullptr, 0, wq, rows, rows, out_w, false, false};
          run_span(convs[1], d, phases, (rows - 1) * wq + out_w, phase_floats, sums);
        }
        for (int64_t k = 0; k < c_in; ++k)  // the input at stride 2 into its planes [c2, c2 + Cin)
          for (int64_t o = r0; o < r1; ++o) {
            const float* src = x + n * image + (k * h + 2 * o) * w;
            float* dst = merged + (c2 + k) * band * out_w + (o - r0) * out_w;
            for (int64_t i = 0; i < out_w; ++i) dst[i] = src[2 * i];
          }
        {  // the last conv and the downsample as one conv, and the ReLU, into the output's rows [r0, r1)
          const Dest d{y + n * c3 * out_plane + r0 * out_w, out_plane, out_w, 0, nullptr, 0, out_w, rows, rows,
                       out_w, true, stream};
          run_span(convs[2], d, merged, rows * out_w, merged_floats, sums);
        }
      }
    }
#ifdef CVLTH_X86
    if (stream) _mm_sfence();
#endif
  });
}

// The stride phases of zero-padded planes: a stride-s convolution reads phase (a, b) of each input
// plane, its padded rows a, a + s, ... and columns b, b + s, ..., as a plane of its own (see
// DirectSparseConv2d.offsets). `outer` x `inner` input planes of h x w; output plane
// (o * s_h * s_w + phase) * inner + i of hq x wq. Padding (`lead_*` rows/columns before the input)
// and whatever lies beyond the input are zeros. PyTorch's strided copies took 1.3-1.9x longer here.
// (The input planes are read `s_h s_w` times, once per phase: from L2 for a ResNet's plane sizes.)
void split_phases(torch::Tensor input,  // [outer * inner planes, h, w] float32 contiguous
                  torch::Tensor out,    // [outer * s_h * s_w * inner planes, hq, wq] float32 contiguous
                  int64_t outer, int64_t inner, int64_t s_h, int64_t s_w, int64_t lead_h, int64_t lead_w,
                  bool all_phases) {  // false: phase (0, 0) alone (a strided 1x1 convolution's input)
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && out.dtype() == torch::kFloat32 &&
                  out.is_contiguous() && input.dim() >= 2 && out.dim() >= 2,
              "split_phases: contiguous float32 tensors expected");
  const int64_t h = input.size(-2), w = input.size(-1), hq = out.size(-2), wq = out.size(-1);
  const int64_t phases = all_phases ? s_h * s_w : 1;
  TORCH_CHECK(input.numel() == outer * inner * h * w && out.numel() == outer * phases * inner * hq * wq,
              "split_phases: shapes");
  const float* x = input.data_ptr<float>();
  float* y = out.data_ptr<float>();
  at::parallel_for(0, outer * inner * phases, 1, [&](int64_t first, int64_t last) {
    for (int64_t job = first; job < last; ++job) {
      const int64_t plane = job / phases, phase = job - plane * phases;
      const int64_t o = plane / inner, i = plane - o * inner, a = phase / s_w, b = phase - a * s_w;
      const float* src = x + plane * h * w;
      float* dst = y + ((o * phases + phase) * inner + i) * hq * wq;
      // columns c of the phase whose input column b + s_w c - lead_w lies inside [0, w)
      const int64_t c0 = std::max<int64_t>(0, (lead_w - b + s_w - 1) / s_w);
      const int64_t last_col = w - 1 + lead_w - b;  // s_w c <= this
      const int64_t c1 = last_col < 0 ? c0 : std::min<int64_t>(wq, std::max<int64_t>(c0, last_col / s_w + 1));
      for (int64_t r = 0; r < hq; ++r) {
        float* row = dst + r * wq;
        const int64_t src_row = a + s_h * r - lead_h;
        if (src_row < 0 || src_row >= h) {
          std::fill(row, row + wq, 0.0f);
          continue;
        }
        const float* in_row = src + src_row * w + b - lead_w;
        std::fill(row, row + c0, 0.0f);
        for (int64_t c = c0; c < c1; ++c) row[c] = in_row[s_w * c];
        std::fill(row + c1, row + wq, 0.0f);
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_conv_forward", &sparse_conv_forward, py::call_guard<py::gil_scoped_release>(), "direct sparse convolution (float32, NCHW)");
  m.def("tile_floats", &tile_floats, "outputs per tile (vector lanes x registers)");
  m.def("shifted_available", &shifted_available, "whether the column-shifted conv is built (AVX-512)");
  m.def("shifted_tile_floats", &shifted_tile_floats, "outputs per tile of the column-shifted conv");
  m.def("vector_lanes", &vector_lanes, "floats per vector register");
  m.def("dense_conv_nhwc", &dense_conv_nhwc, py::call_guard<py::gil_scoped_release>(), "dense channels-last convolution for a stem (float32)");
  m.def("bottleneck_bands", &bottleneck_bands, py::call_guard<py::gil_scoped_release>(), "a bottleneck block a band of rows at a time (float32)");
  m.def("strided_front_bands", &strided_front_bands, py::call_guard<py::gil_scoped_release>(), "a strided bottleneck's 1x1 and strided 3x3 a band of rows at a time (float32)");
  m.def("split_phases", &split_phases, py::call_guard<py::gil_scoped_release>(), "stride phases of zero-padded planes (float32)");
  m.def("dense_conv_pool", &dense_conv_pool, py::call_guard<py::gil_scoped_release>(), "a stem's dense conv, ReLU and max pool in one pass (float32)");
}
