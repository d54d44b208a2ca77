// cvlth's direct sparse convolution for unstructured tickets on CPU (float32, NCHW, groups = 1).
//
// Only the kept weights are stored: for each, its value and the offset of the input element it
// multiplies inside one image of the (zero-padded, stride-phased) input, channel, row and column
// folded into one number. No im2col matrix is built.
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
#include <vector>

// the sums of one tile stay in registers: 16 of AVX-512's 32, 8 of AVX's 16
#if defined(__AVX512F__) && !defined(CVLTH_AVX2_VECTORS)
constexpr int kLanes = 16;
constexpr int kVectors = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
constexpr int kVectors = 8;
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

// One tile of one output channel: its sums (from `sums`, or zero when `fresh`) plus its kept weights
// in [begin, end), kept in registers. Without `dst` they go back to `sums` (another chunk follows, or
// the caller writes them out); with it (the last chunk of a tile whose outputs are consecutive in
// the output: no padded width, no border) straight to the output, bias, residual and ReLU applied.
template <int NV>
static inline void accumulate_tile(const float* base, const int32_t* off, const float* val, int64_t begin,
                                   int64_t end, float* sums, bool fresh, float* dst, const float* res,
                                   float shift, bool relu, bool stream) {
  vec acc[NV];
#pragma GCC unroll 16
  for (int i = 0; i < NV; ++i) acc[i] = fresh ? vec{} : *reinterpret_cast<const uvec*>(sums + i * kLanes);
  for (int64_t k = begin; k < end; ++k) {
    const float* p = base + off[k];
    // p in a register of its own: each multiply-add then reads [p + constant]. Left to itself the
    // compiler folds the offset in ([base + off * 4 + constant]), and an instruction with three
    // operands and an indexed address is split in two micro-ops on Intel cores: 8.5 % of the whole
    // ticket's time at 90 % sparsity here (measured side by side).
    asm volatile("" : "+r"(p));
    // broadcast straight from memory (0 + v would be an add, then a shuffle on the FMA's port)
    const vec v = val[k] - vec{};
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

static inline void accumulate(int nv, const float* base, const int32_t* off, const float* val, int64_t begin,
                              int64_t end, float* sums, bool fresh, float* dst = nullptr,
                              const float* res = nullptr, float shift = 0.0f, bool relu = false,
                              bool stream = false) {
#define CVLTH_CASE(N) \
  case N: return accumulate_tile<N>(base, off, val, begin, end, sums, fresh, dst, res, shift, relu, stream);
  switch (nv) {
    CVLTH_CASE(1) CVLTH_CASE(2) CVLTH_CASE(3) CVLTH_CASE(4) CVLTH_CASE(5) CVLTH_CASE(6) CVLTH_CASE(7)
    CVLTH_CASE(8) CVLTH_CASE(9) CVLTH_CASE(10) CVLTH_CASE(11) CVLTH_CASE(12) CVLTH_CASE(13) CVLTH_CASE(14)
    CVLTH_CASE(15)
    default:
      return accumulate_tile<kVectors>(base, off, val, begin, end, sums, fresh, dst, res, shift, relu, stream);
  }
#undef CVLTH_CASE
}

// a tile shorter than its vectors, where a full one would read past the input's end
static inline void accumulate_short(const float* base, const int32_t* off, const float* val, int64_t begin,
                                    int64_t end, int64_t len, float* sums, bool fresh) {
  if (fresh) std::fill(sums, sums + len, 0.0f);
  for (int64_t k = begin; k < end; ++k) {
    const float* p = base + off[k];
    const float v = val[k];
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
// A dense convolution for a stem (few input channels, e.g. 3, and up to 4 vectors of output
// channels): channels-last, vectorized over the output channels. A run of P output pixels of one
// row keeps the sums of all its output channels in registers (P x V vectors); per tap, the V weight
// vectors are loaded once and serve the P pixels. A stem's 3 input channels leave no room for the
// sparse kernel's plane-wise vectors, and oneDNN's general path took twice ONNX Runtime's time here.
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
// `taps` = kernel width x channels consecutive floats per kernel row
template <int V, int P>
static inline void dense_pixels(const float* src, int64_t step, int64_t row, int64_t kh, int64_t taps,
                                const float* w, const float* bias, bool relu, float* dst) {
  constexpr int cout = V * kLanes;
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
  int64_t hp, wp, cin, kh, kw, stride, out_w;
};

template <int V>
static void dense_row(const DenseConv& c, int64_t n, int64_t oy, float* dst) {
  constexpr int P = pixels_per_run<V>();
  constexpr int cout = V * kLanes;
  const int64_t row = c.wp * c.cin, step = c.stride * c.cin, taps = c.kw * c.cin;
  const float* src = c.x + (n * c.hp + oy * c.stride) * row;
  int64_t ox = 0;
  for (; ox + P <= c.out_w; ox += P)
    dense_pixels<V, P>(src + ox * step, step, row, c.kh, taps, c.w, c.b, c.relu, dst + ox * cout);
  for (; ox < c.out_w; ++ox) dense_pixels<V, 1>(src + ox * step, step, row, c.kh, taps, c.w, c.b, c.relu, dst + ox * cout);
}

using DenseRow = void (*)(const DenseConv&, int64_t, int64_t, float*);

static DenseRow dense_row_for(int64_t vectors) {
  switch (vectors) {
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
  TORCH_CHECK(cout % kLanes == 0 && cout / kLanes >= 1 && cout / kLanes <= 4, name,
              ": output channels must be 1 to 4 vectors");
  TORCH_CHECK(bias.numel() == cout && bias.is_contiguous(), name, ": bias shape");
  const int64_t hp = input.size(1), wp = input.size(2), kh = weight.size(0), kw = weight.size(1);
  TORCH_CHECK((out_h - 1) * stride + kh <= hp && (out_w - 1) * stride + kw <= wp, name,
              ": output larger than the input allows");
  return DenseConv{input.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(), relu, hp, wp,
                   input.size(3), kh, kw, stride, out_w};
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

void sparse_conv_forward(
    torch::Tensor input,     // [N, P, Hq, Wq] float32 contiguous: padded (and phased) input planes
    torch::Tensor rowptr,    // [chunks, Cout + 1] int64: chunk c, output channel co: its weights
    torch::Tensor offsets,   // [nnz] int32: plane * Hq * Wq + row shift * Wq + column shift
    torch::Tensor values,    // [nnz] float32
    torch::Tensor bias,      // [Cout] float32, or empty
    bool relu,               // max(0, .) last
    int64_t out_h, int64_t out_w,  // of one image
    torch::Tensor out,       // [N, Cout, stack * (out_h + 2 pad), out_w + 2 pad] float32 contiguous
    int64_t pad,             // the output's zero border (left as it is)
    torch::Tensor residual,  // [N, Cout, stack * out_h, out_w] float32 contiguous, or empty: added before the ReLU
    int64_t max_offset,      // the largest offset
    int64_t stack,           // images stacked along the rows of each plane (channel-major layout), or 1
    int64_t chunk_planes,    // input planes per chunk (0: no prefetching)
    int64_t halo) {          // floats a tile reads in a plane beyond its own outputs' positions
  TORCH_CHECK(input.dtype() == torch::kFloat32 && input.is_contiguous() && input.dim() == 4,
              "sparse_conv_forward: a contiguous float32 NCHW input is expected");
  TORCH_CHECK(out.dtype() == torch::kFloat32 && out.is_contiguous(), "sparse_conv_forward: bad output");
  TORCH_CHECK(offsets.dtype() == torch::kInt32 && rowptr.dtype() == torch::kInt64, "sparse_conv_forward: index types");
  const int64_t n_images = input.size(0), wq = input.size(3);
  TORCH_CHECK(stack >= 1 && input.size(2) % stack == 0, "sparse_conv_forward: rows not a multiple of the stack");
  const int64_t hq = input.size(2) / stack;  // input rows of one stacked image
  const int64_t image = input.size(1) * input.size(2) * wq, total = input.numel();
  const int64_t chunks = rowptr.size(0), out_channels = rowptr.size(1) - 1;
  const int64_t oh = out_h + 2 * pad, ow = out_w + 2 * pad;
  TORCH_CHECK(out.size(0) == n_images && out.size(1) == out_channels &&
                  out.size(2) == stack * oh && out.size(3) == ow,
              "sparse_conv_forward: output shape");
  TORCH_CHECK(residual.numel() == 0 || residual.numel() == n_images * out_channels * stack * out_h * out_w,
              "sparse_conv_forward: residual shape");
  // outputs over the padded width and, between stacked images, over their padding rows (computed,
  // never written); the last image's last row cut
  const int64_t span = ((stack - 1) * hq + out_h - 1) * wq + out_w;
  // registers per tile: the fewest outputs computed in all (a tile past the span's end is moved back
  // over the tile before it), then the longest tiles
  const int64_t vectors = (span + kLanes - 1) / kLanes;
  const int most = static_cast<int>(std::min<int64_t>(kVectors, vectors));
  int nv = most;
  int64_t least = (vectors + most - 1) / most * most;
  for (int candidate = most - 1; candidate >= std::max(1, most / 2); --candidate) {
    const int64_t computed = (vectors + candidate - 1) / candidate * candidate;
    if (computed < least) {
      least = computed;
      nv = candidate;
    }
  }
  const int64_t tile_len = nv * kLanes;
  const int64_t tiles = (span + tile_len - 1) / tile_len;
  const float* x = input.data_ptr<float>();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int32_t* off = offsets.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  const float* b = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* y = out.data_ptr<float>();
  const float* r = residual.numel() ? residual.data_ptr<float>() : nullptr;
  // output position t is output element t
  const bool consecutive = wq == out_w && pad == 0 && (stack == 1 || hq == out_h);
  const int64_t plane_out = stack * out_h * out_w, plane_padded = stack * oh * ow;

  // blocks of (image, tile, group of output channels): the channels are split in groups only when
  // there are too few (image, tile) pairs for every thread to have a few (a small batch)
  const int64_t pairs = n_images * tiles, threads = at::get_num_threads();
  const int64_t groups = std::min<int64_t>(out_channels, std::max<int64_t>(1, (4 * threads + pairs - 1) / pairs));
  const int64_t group_size = (out_channels + groups - 1) / groups;
  // a tile: its image, first output, length, and whether its vectors may all be read in full
  struct Tile {
    int64_t n, t0, len;
    bool full;
  };
  auto tile_of = [&](int64_t pair) {
    Tile t{pair / tiles, (pair % tiles) * tile_len, tile_len, false};
    t.full = t.n * image + t.t0 + tile_len + max_offset <= total;
    if (!t.full && span >= tile_len) {  // end the tile at the span: inside its image (outputs
      t.t0 = span - tile_len;           // shared with the tile before are computed twice, equally)
      t.full = true;
    } else if (!t.full) {
      t.len = span - t.t0;
    }
    return t;
  };
  // Chunk `c`'s rows of a tile are prefetched while the chunk before is computed (the next tile's
  // first chunk while a tile's last is), a share before each output channel: the hardware's
  // prefetchers follow a few streams, a chunk is up to a few dozen planes. Measured on ResNet-50 at
  // batch 16 here: 5 % faster at 95 % sparsity, no change at 90 % (+0.8 %, within the noise).
  const int64_t lines_per_plane = chunk_planes > 0 ? (tile_len + halo + 15) / 16 + 1 : 0;  // 64-byte lines
  const int64_t plane_stride = input.size(2) * wq, planes = input.size(1);
  const bool stream = out.numel() * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
  at::parallel_for(0, pairs * groups, 1, [&](int64_t first, int64_t last) {
    // of vectors: aligned to their size, so a sum's load or store never spans two cache lines (a
    // buffer of floats was not: 4 % of the ticket at 90 % sparsity)
    std::vector<vec> sums_buffer(static_cast<size_t>(out_channels * kVectors));
    float* const sums_base = reinterpret_cast<float*>(sums_buffer.data());
    for (int64_t block = first; block < last; ++block) {
      const int64_t pair = block / groups, group = block % groups;
      const int64_t co_begin = group * group_size, co_end = std::min(out_channels, co_begin + group_size);
      if (co_begin >= co_end) continue;  // the last groups of a rounded-up split
      const Tile tile = tile_of(pair);
      const int64_t n = tile.n, t0 = tile.t0, len = tile.len;
      const bool full = tile.full;
      const float* base = x + n * image + t0;
      // outputs consecutive in the output tensor: the last chunk stores them itself
      const bool straight = consecutive && full && t0 + tile_len <= span;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t* cp = ptr + c * (out_channels + 1);
        const bool last_chunk = c + 1 == chunks;
        const float* ahead = nullptr;  // the rows to prefetch: planes [p0, p0 + chunk_planes) from here
        int64_t p0 = 0;
        if (!last_chunk) {
          ahead = full ? base : nullptr;
          p0 = (c + 1) * chunk_planes;
        } else if (block + 1 < last) {
          const Tile next = tile_of((block + 1) / groups);
          if (next.full) ahead = x + next.n * image + next.t0;
        }
        const int64_t lines = ahead ? (std::min(planes, p0 + chunk_planes) - p0) * lines_per_plane : 0;
        const int64_t per_channel = (lines + (co_end - co_begin) - 1) / (co_end - co_begin);
        for (int64_t co = co_begin, line = 0; co < co_end; ++co) {
          for (const int64_t line_end = std::min(lines, line + per_channel); line < line_end; ++line) {
            const int64_t plane = p0 + line / lines_per_plane;
            __builtin_prefetch(ahead + plane * plane_stride + (line % lines_per_plane) * 16, 0, 3);
          }
          float* sums = sums_base + co * kTile;
          if (straight && last_chunk) {
            const int64_t plane = (n * out_channels + co) * plane_out;
            float* dst = y + plane + t0;
            accumulate(nv, base, off, val, cp[co], cp[co + 1], sums, c == 0, dst, r ? r + plane + t0 : nullptr,
                       b ? b[co] : 0.0f, relu, stream && reinterpret_cast<uintptr_t>(dst) % sizeof(vec) == 0);
          } else if (full) {
            accumulate(nv, base, off, val, cp[co], cp[co + 1], sums, c == 0);
          } else {
            accumulate_short(base, off, val, cp[co], cp[co + 1], len, sums, c == 0);
          }
        }
      }
      if (straight) continue;
      // write the tile's outputs that exist (t < span, column < out_w), a row segment at a time
      const int64_t t_end = std::min(t0 + len, span);
      for (int64_t co = co_begin; co < co_end; ++co) {
        const float* sums = sums_base + co * kTile;
        const float shift = b ? b[co] : 0.0f;
        float* dst = y + (n * out_channels + co) * plane_padded;
        const float* res = r ? r + (n * out_channels + co) * plane_out : nullptr;
        for (int64_t t = t0; t < t_end;) {
          const int64_t row = t / wq, ox = t - row * wq;  // row of the stacked plane
          const int64_t img = row / hq, oy = row - img * hq;  // stacked image, its output row
          const int64_t row_end = std::min(t_end, (row + 1) * wq);
          const int64_t count = std::min(row_end, row * wq + out_w) - t;
          if (count > 0 && oy < out_h) {
            write_out(dst + (img * oh + oy + pad) * ow + ox + pad, sums + (t - t0),
                      res ? res + (img * out_h + oy) * out_w + ox : nullptr, count, shift, relu);
          }
          t = row_end;
        }
      }
    }
#ifdef CVLTH_X86
    if (stream) _mm_sfence();  // the streamed stores visible before the output is read
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
  m.def("vector_lanes", &vector_lanes, "floats per vector register");
  m.def("dense_conv_nhwc", &dense_conv_nhwc, py::call_guard<py::gil_scoped_release>(), "dense channels-last convolution for a stem (float32)");
  m.def("split_phases", &split_phases, py::call_guard<py::gil_scoped_release>(), "stride phases of zero-padded planes (float32)");
  m.def("dense_conv_pool", &dense_conv_pool, py::call_guard<py::gil_scoped_release>(), "a stem's dense conv, ReLU and max pool in one pass (float32)");
}
