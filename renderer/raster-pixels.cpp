// Runs in: renderer (sandboxed). Input: images we own and regions already clipped to them; every
// loop still clips to the images so a caller's mistake cannot write outside them.
#include "renderer/raster-pixels.h"

#include <spice/enums.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace spicebox::renderer::pixels {

Rop ropFromDescriptor(uint16_t descriptor, uint16_t srcInvertBit, uint16_t destInvertBit) {
  const bool invS = descriptor & srcInvertBit;
  const bool invD = descriptor & destInvertBit;
  const bool invR = descriptor & SPICE_ROPD_INVERS_RES;
  // Operands, each possibly inverted, then the result possibly inverted: expressed on the four
  // truth-table rows (s, d) = (0,0), (0,1), (1,0), (1,1) and mapped back to a named Rop.
  auto table = [&](auto op) {
    unsigned bits = 0;
    for (unsigned s = 0; s < 2; ++s) {
      for (unsigned d = 0; d < 2; ++d) {
        unsigned r = op(s ^ invS, d ^ invD) ^ invR;
        bits |= (r & 1u) << (s * 2 + d);
      }
    }
    return bits;
  };
  unsigned bits;
  if (descriptor & SPICE_ROPD_OP_PUT) {
    bits = table([](unsigned s, unsigned) { return s; });
  } else if (descriptor & SPICE_ROPD_OP_OR) {
    bits = table([](unsigned s, unsigned d) { return s | d; });
  } else if (descriptor & SPICE_ROPD_OP_AND) {
    bits = table([](unsigned s, unsigned d) { return s & d; });
  } else if (descriptor & SPICE_ROPD_OP_XOR) {
    bits = table([](unsigned s, unsigned d) { return s ^ d; });
  } else if (descriptor & SPICE_ROPD_OP_BLACKNESS) {
    return Rop::Clear;
  } else if (descriptor & SPICE_ROPD_OP_WHITENESS) {
    return Rop::Set;
  } else if (descriptor & SPICE_ROPD_OP_INVERS) {
    return Rop::Invert;
  } else {
    return Rop::Copy;  // the reference's default for a descriptor with no operation
  }
  // Row order (s,d): bit0 = (0,0), bit1 = (0,1), bit2 = (1,0), bit3 = (1,1).
  switch (bits) {
    case 0x0:
      return Rop::Clear;
    case 0x8:
      return Rop::And;
    case 0x4:
      return Rop::AndReverse;
    case 0xc:
      return Rop::Copy;
    case 0x2:
      return Rop::AndInverted;
    case 0xa:
      return Rop::Noop;
    case 0x6:
      return Rop::Xor;
    case 0xe:
      return Rop::Or;
    case 0x1:
      return Rop::Nor;
    case 0x9:
      return Rop::Equiv;
    case 0x5:
      return Rop::Invert;
    case 0xd:
      return Rop::OrReverse;
    case 0x3:
      return Rop::CopyInverted;
    case 0xb:
      return Rop::OrInverted;
    case 0x7:
      return Rop::Nand;
    default:
      return Rop::Set;
  }
}

int bitsPerPixel(pixman_image_t* image) {
  return PIXMAN_FORMAT_BPP(pixman_image_get_format(image));
}

static uint8_t* rowOf(pixman_image_t* image, int y) {
  return reinterpret_cast<uint8_t*>(pixman_image_get_data(image)) +
         static_cast<ptrdiff_t>(y) * pixman_image_get_stride(image);
}

uint32_t getPixel(pixman_image_t* image, int x, int y) {
  uint8_t* row = rowOf(image, y);
  switch (bitsPerPixel(image)) {
    case 32: {
      uint32_t v;
      std::memcpy(&v, row + 4 * x, 4);
      return v;
    }
    case 16: {
      uint16_t v;
      std::memcpy(&v, row + 2 * x, 2);
      return v;
    }
    case 8:
      return row[x];
    case 1: {  // pixman a1 on little-endian hosts: bit (x & 31) of 32-bit word x / 32
      uint32_t word;
      std::memcpy(&word, row + 4 * (x / 32), 4);
      return (word >> (x & 31)) & 1u;
    }
    default:
      return 0;
  }
}

void putPixel(pixman_image_t* image, int x, int y, uint32_t value) {
  uint8_t* row = rowOf(image, y);
  switch (bitsPerPixel(image)) {
    case 32:
      std::memcpy(row + 4 * x, &value, 4);
      break;
    case 16: {
      uint16_t v = static_cast<uint16_t>(value);
      std::memcpy(row + 2 * x, &v, 2);
      break;
    }
    case 8:
      row[x] = static_cast<uint8_t>(value);
      break;
    case 1: {
      uint32_t word;
      std::memcpy(&word, row + 4 * (x / 32), 4);
      word = (word & ~(1u << (x & 31))) | ((value & 1u) << (x & 31));
      std::memcpy(row + 4 * (x / 32), &word, 4);
      break;
    }
    default:
      break;
  }
}

// A region rectangle clipped to the image (defensive: callers clip already).
static bool clipBox(pixman_image_t* image, pixman_box32_t box, pixman_box32_t& out) {
  out.x1 = std::max(box.x1, 0);
  out.y1 = std::max(box.y1, 0);
  out.x2 = std::min(box.x2, pixman_image_get_width(image));
  out.y2 = std::min(box.y2, pixman_image_get_height(image));
  return out.x2 > out.x1 && out.y2 > out.y1;
}

// Calls f(std::integral_constant<Rop, rop>{}): the ROP a compile-time constant in the row loops.
template <typename F>
static void withRop(Rop rop, F&& f) {
  switch (rop) {
#define SB_ROP_CASE(name)                        \
  case Rop::name:                                \
    f(std::integral_constant<Rop, Rop::name>{}); \
    return;
    SB_ROP_CASE(Clear)
    SB_ROP_CASE(And)
    SB_ROP_CASE(AndReverse)
    SB_ROP_CASE(Copy)
    SB_ROP_CASE(AndInverted)
    SB_ROP_CASE(Noop)
    SB_ROP_CASE(Xor)
    SB_ROP_CASE(Or)
    SB_ROP_CASE(Nor)
    SB_ROP_CASE(Equiv)
    SB_ROP_CASE(Invert)
    SB_ROP_CASE(OrReverse)
    SB_ROP_CASE(CopyInverted)
    SB_ROP_CASE(OrInverted)
    SB_ROP_CASE(Nand)
    SB_ROP_CASE(Set)
#undef SB_ROP_CASE
  }
}

// Calls f(T{}) with T the pixel integer of an 8/16/32 bpp image; false (nothing called) for
// other depths, which take the per-pixel path.
template <typename F>
static bool withPixelType(int bpp, F&& f) {
  switch (bpp) {
    case 32:
      f(uint32_t{});
      return true;
    case 16:
      f(uint16_t{});
      return true;
    case 8:
      f(uint8_t{});
      return true;
    default:
      return false;
  }
}

// Row y of the image as pixels of type T (pixman rows are 32-bit aligned).
template <typename T>
static T* typedRow(uint8_t* bits, ptrdiff_t stride, int64_t y) {
  return reinterpret_cast<T*>(bits + stride * y);
}

void fillRegion(pixman_image_t* dest, Region& region, uint32_t color, Rop rop) {
  int n = 0;
  pixman_box32_t* boxes = region.rects(&n);
  const int bpp = bitsPerPixel(dest);
  auto* bits = reinterpret_cast<uint8_t*>(pixman_image_get_data(dest));
  const ptrdiff_t stride = pixman_image_get_stride(dest);
  for (int i = 0; i < n; ++i) {
    pixman_box32_t b;
    if (!clipBox(dest, boxes[i], b)) {
      continue;
    }
    if (rop == Rop::Copy && bpp >= 8 &&
        pixman_fill(pixman_image_get_data(dest), pixman_image_get_stride(dest) / 4, bpp, b.x1, b.y1,
                    b.x2 - b.x1, b.y2 - b.y1, color)) {
      continue;
    }
    const bool typed = withPixelType(bpp, [&](auto pixel) {
      using T = decltype(pixel);
      withRop(rop, [&](auto r) {
        constexpr Rop R = decltype(r)::value;
        for (int y = b.y1; y < b.y2; ++y) {
          T* row = typedRow<T>(bits, stride, y);
          for (int x = b.x1; x < b.x2; ++x) {
            row[x] = static_cast<T>(applyRop(R, color, row[x]));
          }
        }
      });
    });
    if (typed) {
      continue;
    }
    for (int y = b.y1; y < b.y2; ++y) {
      for (int x = b.x1; x < b.x2; ++x) {
        putPixel(dest, x, y, applyRop(rop, color, getPixel(dest, x, y)));
      }
    }
  }
}

static int64_t positiveMod(int64_t v, int64_t m) {
  int64_t r = v % m;
  return r < 0 ? r + m : r;
}

void tileRegion(pixman_image_t* dest, Region& region, pixman_image_t* tile, int64_t offsetX,
                int64_t offsetY, Rop rop) {
  const int tw = pixman_image_get_width(tile), th = pixman_image_get_height(tile);
  if (tw <= 0 || th <= 0) {
    return;
  }
  const int bpp = bitsPerPixel(dest);
  const bool sameDepth = bpp == bitsPerPixel(tile);
  auto* bits = reinterpret_cast<uint8_t*>(pixman_image_get_data(dest));
  const ptrdiff_t stride = pixman_image_get_stride(dest);
  auto* tileBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(tile));
  const ptrdiff_t tileStride = pixman_image_get_stride(tile);
  int n = 0;
  pixman_box32_t* boxes = region.rects(&n);
  for (int i = 0; i < n; ++i) {
    pixman_box32_t b;
    if (!clipBox(dest, boxes[i], b)) {
      continue;
    }
    const int tx0 = static_cast<int>(positiveMod(b.x1 - offsetX, tw));
    const bool typed = sameDepth && withPixelType(bpp, [&](auto pixel) {
                         using T = decltype(pixel);
                         withRop(rop, [&](auto r) {
                           constexpr Rop R = decltype(r)::value;
                           for (int y = b.y1; y < b.y2; ++y) {
                             const T* tileRow =
                                 typedRow<T>(tileBits, tileStride, positiveMod(y - offsetY, th));
                             T* row = typedRow<T>(bits, stride, y);
                             int tx = tx0;
                             for (int x = b.x1; x < b.x2; ++x) {
                               row[x] = static_cast<T>(applyRop(R, tileRow[tx], row[x]));
                               if (++tx == tw) {
                                 tx = 0;
                               }
                             }
                           }
                         });
                       });
    if (typed) {
      continue;
    }
    for (int y = b.y1; y < b.y2; ++y) {
      const int ty = static_cast<int>(positiveMod(y - offsetY, th));
      int tx = tx0;
      for (int x = b.x1; x < b.x2; ++x) {
        uint32_t s = getPixel(tile, tx, ty);
        putPixel(dest, x, y, rop == Rop::Copy ? s : applyRop(rop, s, getPixel(dest, x, y)));
        if (++tx == tw) {
          tx = 0;
        }
      }
    }
  }
}

// Clips dest box b against the source image at the offset; false when nothing is left.
static bool clipToSource(pixman_image_t* src, int64_t offsetX, int64_t offsetY, pixman_box32_t& b) {
  const int64_t sw = pixman_image_get_width(src), sh = pixman_image_get_height(src);
  const int64_t x1 = std::max<int64_t>(b.x1, offsetX), y1 = std::max<int64_t>(b.y1, offsetY);
  const int64_t x2 = std::min<int64_t>(b.x2, offsetX + sw);
  const int64_t y2 = std::min<int64_t>(b.y2, offsetY + sh);
  if (x2 <= x1 || y2 <= y1) {
    return false;
  }
  b = {static_cast<int32_t>(x1), static_cast<int32_t>(y1), static_cast<int32_t>(x2),
       static_cast<int32_t>(y2)};
  return true;
}

void blitRegion(pixman_image_t* dest, Region& region, pixman_image_t* src, int64_t offsetX,
                int64_t offsetY, Rop rop) {
  const int bpp = bitsPerPixel(dest);
  if (bpp != bitsPerPixel(src)) {
    return;  // callers convert first; the reference asserts here
  }
  auto* bits = reinterpret_cast<uint8_t*>(pixman_image_get_data(dest));
  const ptrdiff_t stride = pixman_image_get_stride(dest);
  auto* srcBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(src));
  const ptrdiff_t srcStride = pixman_image_get_stride(src);
  int n = 0;
  pixman_box32_t* boxes = region.rects(&n);
  for (int i = 0; i < n; ++i) {
    pixman_box32_t b;
    if (!clipBox(dest, boxes[i], b) || !clipToSource(src, offsetX, offsetY, b)) {
      continue;
    }
    const int sx = static_cast<int>(b.x1 - offsetX), sy = static_cast<int>(b.y1 - offsetY);
    if (rop == Rop::Copy && bpp >= 8) {
      const size_t bytes = static_cast<size_t>(b.x2 - b.x1) * (bpp / 8);
      for (int y = b.y1; y < b.y2; ++y) {
        std::memmove(rowOf(dest, y) + static_cast<size_t>(b.x1) * (bpp / 8),
                     rowOf(src, sy + (y - b.y1)) + static_cast<size_t>(sx) * (bpp / 8), bytes);
      }
      continue;
    }
    const bool typed = withPixelType(bpp, [&](auto pixel) {
      using T = decltype(pixel);
      withRop(rop, [&](auto r) {
        constexpr Rop R = decltype(r)::value;
        for (int y = b.y1; y < b.y2; ++y) {
          const T* srcRow = typedRow<T>(srcBits, srcStride, sy + (y - b.y1)) + sx;
          T* row = typedRow<T>(bits, stride, y) + b.x1;
          for (int x = 0; x < b.x2 - b.x1; ++x) {
            row[x] = static_cast<T>(applyRop(R, srcRow[x], row[x]));
          }
        }
      });
    });
    if (typed) {
      continue;
    }
    for (int y = b.y1; y < b.y2; ++y) {
      for (int x = b.x1; x < b.x2; ++x) {
        uint32_t s = getPixel(src, sx + (x - b.x1), sy + (y - b.y1));
        putPixel(dest, x, y, applyRop(rop, s, getPixel(dest, x, y)));
      }
    }
  }
}

void colorKeyRegion(pixman_image_t* dest, Region& region, pixman_image_t* src, int64_t offsetX,
                    int64_t offsetY, uint32_t key) {
  const int bpp = bitsPerPixel(dest);
  if (bpp != bitsPerPixel(src)) {
    return;
  }
  const uint32_t keyMask = bpp == 32 ? 0xffffffu : bpp == 16 ? 0xffffu : bpp == 8 ? 0xffu : 1u;
  key &= keyMask;
  auto* bits = reinterpret_cast<uint8_t*>(pixman_image_get_data(dest));
  const ptrdiff_t stride = pixman_image_get_stride(dest);
  auto* srcBits = reinterpret_cast<uint8_t*>(pixman_image_get_data(src));
  const ptrdiff_t srcStride = pixman_image_get_stride(src);
  int n = 0;
  pixman_box32_t* boxes = region.rects(&n);
  for (int i = 0; i < n; ++i) {
    pixman_box32_t b;
    if (!clipBox(dest, boxes[i], b) || !clipToSource(src, offsetX, offsetY, b)) {
      continue;
    }
    const int sx = static_cast<int>(b.x1 - offsetX), sy = static_cast<int>(b.y1 - offsetY);
    const bool typed = withPixelType(bpp, [&](auto pixel) {
      using T = decltype(pixel);
      for (int y = b.y1; y < b.y2; ++y) {
        const T* srcRow = typedRow<T>(srcBits, srcStride, sy + (y - b.y1)) + sx;
        T* row = typedRow<T>(bits, stride, y) + b.x1;
        for (int x = 0; x < b.x2 - b.x1; ++x) {
          const T s = srcRow[x];
          if ((s & keyMask) != key) {
            row[x] = s;
          }
        }
      }
    });
    if (typed) {
      continue;
    }
    for (int y = b.y1; y < b.y2; ++y) {
      for (int x = b.x1; x < b.x2; ++x) {
        uint32_t s = getPixel(src, sx + (x - b.x1), sy + (y - b.y1));
        if ((s & keyMask) != key) {
          putPixel(dest, x, y, s);
        }
      }
    }
  }
}

}  // namespace spicebox::renderer::pixels
