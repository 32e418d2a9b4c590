// The axial shift on CPU in one parallel pass: every output element is written once.
//
// Operator: asmlp_mm::axial_gather(Tensor x, int dim, int[] group_ends, int[] shifts,
//                                  int[] index) -> Tensor
//
// Channel group g covers channels [group_ends[g-1], group_ends[g]) of the NCHW tensor x
// (memory: contiguous or channels-last). Along the axis `dim` (2 = H, 3 = W, length L),
// output position p of group g reads input position index[g * L + p], or is zero where
// that entry is -1. shifts[g] says which positions are an ordinary shift: index[p] ==
// p + shifts[g] on the run [lo, hi) of positions whose source lies inside the tensor; the
// rest (the border) comes from the index table. The Python side builds the table, so that
// the padding modes are defined in one place; this file only moves memory.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

// The output's memory. A fresh tensor of a few MB is page-faulted in by the first pass that
// writes it, 4 KiB at a time: for a stage-1 tensor of AS-MLP-T at batch 32 (38.5 MB) the
// faults took about 6 of a clone's 8.5 ms on the project's 2-core VM, the copy about 2.
// Outputs of 2 MiB and more are therefore allocated at 2 MiB boundaries and marked for
// transparent huge pages (Linux, with THP in `always` or `madvise` mode), so that they are
// faulted in 2 MiB at a time (the shift then took 4.0-4.5 ms there), as PyTorch's own
// allocator does for its allocations of 2 MiB and more under THP_MEM_ALLOC_ENABLE=1.
// ASMLP_MM_HUGE_PAGES=0 turns it off; smaller outputs come from PyTorch's allocator.
// Allocations and frees go to the default CPU allocator's memory reporter, so that
// torch.profiler sees them exactly as it sees that allocator's.
constexpr size_t kHugePage = size_t(2) << 20;

// torch < 2.3: Allocator::allocate is const and there is no copy_data to implement. The
// only version switches of the kernel (asmlp_mm/ops/torch_compat.py has the Python ones);
// they go once torch >= 2.3 is required.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define ASMLP_MM_ALLOCATOR_2_3 1
#define ASMLP_MM_ALLOCATE_CONST
#else
#define ASMLP_MM_ALLOCATOR_2_3 0
#define ASMLP_MM_ALLOCATE_CONST const
#endif

bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* value = std::getenv("ASMLP_MM_HUGE_PAGES");
    return value == nullptr || std::strcmp(value, "0") != 0;
  }();
  return wanted;
}

// The deleter needs only the pointer, which is also the DataPtr's context, as torch
// expects of a plain allocation (copy-on-write clones, for one, require it).
void release_huge(void* data) {
  if (data == nullptr) return;
  c10::profiledCPUMemoryReporter().Delete(data);
  std::free(data);
}

struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) ASMLP_MM_ALLOCATE_CONST override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (bytes == 0) return c10::DataPtr(nullptr, cpu);
    void* data = nullptr;
    if (posix_memalign(&data, kHugePage, bytes) != 0) {
      c10::profiledCPUMemoryReporter().OutOfMemory(bytes);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "asmlp_mm: could not allocate ", bytes,
                       " bytes for the shift's output");
    }
#if defined(MADV_HUGEPAGE)
    madvise(data, bytes, MADV_HUGEPAGE);  // a hint: where it is refused, nothing changes
#endif
    c10::profiledCPUMemoryReporter().New(data, bytes);
    return {data, data, &release_huge, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release_huge; }

#if ASMLP_MM_ALLOCATOR_2_3
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif
};

at::Tensor empty_output(const at::Tensor& like, at::MemoryFormat format) {
  // never destroyed: storages that outlive static destruction may still point to it
  static HugePageAllocator* huge_page_allocator = new HugePageAllocator();
  const size_t bytes = static_cast<size_t>(like.numel()) * like.element_size();
#if defined(__linux__)
  if (bytes >= kHugePage && huge_pages_wanted())
    return at::detail::empty_generic(like.sizes(), huge_page_allocator,
                                     c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     like.scalar_type(), format);
#endif
  return at::empty(like.sizes(), like.options().memory_format(format));
}

struct Group {
  int64_t c0, c1;          // channels [c0, c1)
  int64_t lo, hi, shift;   // positions [lo, hi) read position + shift
  const int64_t* source;   // source position of every output position, -1 for zero
};

// Runs of bytes are moved in fixed-size blocks (each a single vector move once inlined)
// and end with one block that overlaps the previous ones, so that no run has a
// byte-by-byte tail: AS-MLP's runs are short (one group's channels of a pixel, or a row of
// 7 to 56 elements), and a vectorized byte loop spent as long in its scalar head and tail
// as in its vector body on them. Source and destination never overlap.
#define ASMLP_MM_INLINE inline __attribute__((always_inline))

// Fewer than 64 bytes: two moves of the largest power of two <= n, overlapping.
ASMLP_MM_INLINE void move_short(unsigned char* __restrict dst,
                                const unsigned char* __restrict src, int64_t n) {
  if (n >= 32) {
    std::memcpy(dst, src, 32);
    std::memcpy(dst + n - 32, src + n - 32, 32);
  } else if (n >= 16) {
    std::memcpy(dst, src, 16);
    std::memcpy(dst + n - 16, src + n - 16, 16);
  } else if (n >= 8) {
    std::memcpy(dst, src, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(dst, src, 4);
    std::memcpy(dst + n - 4, src + n - 4, 4);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

// Any length: a first 64-byte block, then blocks at 64-byte aligned destinations, then
// the last 64 bytes.
ASMLP_MM_INLINE void move_run(unsigned char* __restrict dst,
                              const unsigned char* __restrict src, int64_t n) {
  if (n < 64) return move_short(dst, src, n);
  std::memcpy(dst, src, 64);
  const int64_t skip = 64 - static_cast<int64_t>(reinterpret_cast<uintptr_t>(dst) & 63);
  for (int64_t i = skip; i + 64 <= n; i += 64) std::memcpy(dst + i, src + i, 64);
  std::memcpy(dst + n - 64, src + n - 64, 64);
}

ASMLP_MM_INLINE void zero_run(unsigned char* dst, int64_t n) {
  if (n < 64) {
    if (n >= 32) {
      std::memset(dst, 0, 32);
      std::memset(dst + n - 32, 0, 32);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = 0;
    }
    return;
  }
  for (int64_t i = 0; i + 64 <= n; i += 64) std::memset(dst + i, 0, 64);
  std::memset(dst + n - 64, 0, 64);
}

// The moves are built for AVX-512, AVX2 and baseline x86-64, picked when the library
// loads. cpu_kernel.py builds with -fno-tree-loop-distribute-patterns, so that the block
// loops stay loops of vector moves rather than becoming memcpy calls.
#if defined(__x86_64__) && defined(__GNUC__)
#define ASMLP_MM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ASMLP_MM_CLONES
#endif

ASMLP_MM_CLONES void copy_bytes(const unsigned char* __restrict src,
                                unsigned char* __restrict dst, int64_t n) {
  move_run(dst, src, n);
}

ASMLP_MM_CLONES void zero_bytes(unsigned char* __restrict dst, int64_t n) {
  zero_run(dst, n);
}

template <typename T>
inline void copy_n(const T* src, int64_t n, T* dst) {
  copy_bytes(reinterpret_cast<const unsigned char*>(src), reinterpret_cast<unsigned char*>(dst),
             n * static_cast<int64_t>(sizeof(T)));
}

template <typename T>
inline void zero_n(T* dst, int64_t n) {
  zero_bytes(reinterpret_cast<unsigned char*>(dst), n * static_cast<int64_t>(sizeof(T)));
}

// Bytes per parallel task of the NCHW path: small enough that the border rewrites still
// find the task's lines in L1.
constexpr int64_t kPieceBytes = 16 * 1024;
// Bytes per parallel task of the channels-last path.
constexpr int64_t kTaskBytes = 64 * 1024;

int64_t grain_for(int64_t unit_elements, int64_t element_size) {
  return std::max<int64_t>(1, kTaskBytes / std::max<int64_t>(1, unit_elements * element_size));
}

// Contiguous NCHW. A group's channels of one image are one block of memory, seen as lines
// of L chunks: along H a line is a plane and a chunk a row of W elements; along W a line
// is a row and a chunk one element. Shifting every line by s chunks is shifting the whole
// block by s chunks, except near the ends of the lines; so each task (a piece of about
// kPieceBytes) copies its lines in one flat run, then rewrites their border chunks.
struct Piece {
  int64_t offset;        // first element of the piece's lines
  int64_t lines;         // number of lines
  const Group* group;
};

template <typename T>
void shift_blocks(const T* in, T* out, int64_t batch, int64_t channels, int64_t height,
                  int64_t width, bool along_h, const std::vector<Group>& groups) {
  const int64_t chunk = along_h ? width : 1;
  const int64_t length = along_h ? height : width;
  const int64_t line = chunk * length;
  const int64_t lines_per_channel = along_h ? 1 : height;
  const int64_t lines_per_piece = std::max<int64_t>(1, kPieceBytes / (line * sizeof(T)));
  std::vector<Piece> pieces;
  for (int64_t n = 0; n < batch; ++n) {
    for (const Group& g : groups) {
      const int64_t first = (n * channels + g.c0) * lines_per_channel;
      const int64_t end = (n * channels + g.c1) * lines_per_channel;
      for (int64_t l = first; l < end; l += lines_per_piece)
        pieces.push_back({l * line, std::min(lines_per_piece, end - l), &g});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const Piece& piece = pieces[k];
      const Group& g = *piece.group;
      const T* src = in + piece.offset;
      T* dst = out + piece.offset;
      if (g.hi > g.lo)
        copy_n(src + (g.lo + g.shift) * chunk,
               ((piece.lines - 1) * length + g.hi - g.lo) * chunk, dst + g.lo * chunk);
      // border chunk p of every line, one p at a time (a strided loop along W)
      auto fix = [&](int64_t p) {
        const int64_t from = g.source[p];
        T* to = dst + p * chunk;
        if (from < 0) {
          if (chunk == 1)
            for (int64_t l = 0; l < piece.lines; ++l) to[l * line] = T(0);
          else
            for (int64_t l = 0; l < piece.lines; ++l) zero_n(to + l * line, chunk);
        } else {
          const T* at = src + from * chunk;
          if (chunk == 1)
            for (int64_t l = 0; l < piece.lines; ++l) to[l * line] = at[l * line];
          else
            for (int64_t l = 0; l < piece.lines; ++l) copy_n(at + l * line, chunk, to + l * line);
        }
      };
      for (int64_t p = 0; p < g.lo; ++p) fix(p);
      for (int64_t p = g.hi; p < length; ++p) fix(p);
    }
  });
}

// Channels-last (NHWC): every pixel holds each group's channels as one run of bytes, which
// comes from one source pixel (or is zero). Runs are short (C / shift_size channels), so
// the moves are inlined here, in a function built per instruction set; working in bytes,
// one function serves every dtype. A call handles image rows [begin, end).
ASMLP_MM_CLONES void shift_pixel_rows(const unsigned char* __restrict in,
                                      unsigned char* __restrict out, int64_t begin,
                                      int64_t end, int64_t height, int64_t width,
                                      int64_t pixel_bytes, int64_t element_size, bool along_h,
                                      const Group* groups, int64_t num_groups) {
  for (int64_t q = begin; q < end; ++q) {
    const int64_t n = q / height, h = q % height;
    unsigned char* dst = out + q * width * pixel_bytes;
    for (int64_t w = 0; w < width; ++w, dst += pixel_bytes) {
      for (int64_t k = 0; k < num_groups; ++k) {
        const Group& g = groups[k];
        const int64_t s = g.source[along_h ? h : w];
        unsigned char* to = dst + g.c0 * element_size;
        const int64_t bytes = (g.c1 - g.c0) * element_size;
        if (s < 0) {
          zero_run(to, bytes);
          continue;
        }
        const int64_t sh = along_h ? s : h, sw = along_h ? w : s;
        const unsigned char* from = in + ((n * height + sh) * width + sw) * pixel_bytes +
                                    g.c0 * element_size;
        move_run(to, from, bytes);
      }
    }
  }
}

void shift_pixels(const at::Tensor& src, at::Tensor& out, bool along_h,
                  const std::vector<Group>& groups) {
  const int64_t batch = src.size(0), channels = src.size(1);
  const int64_t height = src.size(2), width = src.size(3);
  const int64_t element_size = src.element_size();
  const auto* in = static_cast<const unsigned char*>(src.const_data_ptr());
  auto* dst = static_cast<unsigned char*>(out.mutable_data_ptr());
  at::parallel_for(0, batch * height, grain_for(width * channels, element_size),
                   [&](int64_t b, int64_t e) {
                     shift_pixel_rows(in, dst, b, e, height, width, channels * element_size,
                                      element_size, along_h, groups.data(),
                                      static_cast<int64_t>(groups.size()));
                   });
}

at::Tensor axial_gather(const at::Tensor& x, int64_t dim, at::IntArrayRef group_ends,
                        at::IntArrayRef shifts, at::IntArrayRef index) {
  TORCH_CHECK(x.dim() == 4, "axial_gather expects an NCHW tensor, got ", x.dim(), " dims");
  TORCH_CHECK(x.device().is_cpu(), "axial_gather runs on CPU tensors");
  TORCH_CHECK(dim == 2 || dim == 3, "dim must be 2 (H) or 3 (W), got ", dim);
  const int64_t batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t length = x.size(dim);
  const int64_t num_groups = static_cast<int64_t>(group_ends.size());
  TORCH_CHECK(num_groups > 0 && static_cast<int64_t>(shifts.size()) == num_groups,
              "one shift per channel group is needed");
  TORCH_CHECK(static_cast<int64_t>(index.size()) == num_groups * length,
              "the index table must have ", num_groups * length, " entries");
  TORCH_CHECK(group_ends[num_groups - 1] == channels, "the channel groups must end at ",
              channels, ", got ", group_ends[num_groups - 1]);

  std::vector<Group> groups;
  int64_t c0 = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t c1 = group_ends[g], shift = shifts[g];
    TORCH_CHECK(c1 > c0, "channel groups must be non-empty and increasing");
    const int64_t lo = std::clamp<int64_t>(-shift, 0, length);
    const int64_t hi = std::max(std::min(length - shift, length), lo);
    const int64_t* source = index.data() + g * length;
    for (int64_t p = 0; p < length; ++p) {
      const bool inside = p >= lo && p < hi;
      TORCH_CHECK(inside ? source[p] == p + shift : (source[p] >= -1 && source[p] < length),
                  "index table entry ", p, " of group ", g, " is ", source[p]);
    }
    groups.push_back({c0, c1, lo, hi, shift, source});
    c0 = c1;
  }

  const bool channels_last =
      !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor src = x.contiguous(format);
  at::Tensor out = empty_output(x, format);
  if (out.numel() == 0) return out;

  if (channels_last) {
    shift_pixels(src, out, dim == 2, groups);
    return out;
  }
  auto run = [&](auto tag) {
    using T = decltype(tag);
    shift_blocks<T>(static_cast<const T*>(src.const_data_ptr()),
                    static_cast<T*>(out.mutable_data_ptr()), batch, channels, height, width,
                    dim == 2, groups);
  };
  // only bits move, so any dtype is handled by the unsigned type of its width
  switch (x.element_size()) {
    case 1: run(uint8_t{}); break;
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default: TORCH_CHECK(false, "axial_gather: unsupported element size ", x.element_size());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(asmlp_mm, m) {
  m.def("axial_gather(Tensor x, int dim, int[] group_ends, int[] shifts, int[] index) -> Tensor");
  // whether outputs of 2 MiB and more are marked for huge pages in this process (fixed at the
  // first call or the first such output)
  m.def("huge_pages_wanted() -> bool", [] { return huge_pages_wanted(); });
}

TORCH_LIBRARY_IMPL(asmlp_mm, CPU, m) {
  m.impl("axial_gather", &axial_gather);
}
