// A CUDA twin of mhc's WGSL `project` (mhc_pre forward's projection), to ask the hardware,
// through ncu, where such a loop's cycles go on this card: x bf16 [T, K], phi f32 [24, K]
// (gamma folded), partial sums [splits, T, 25] (24 dot products and the sum of squares).
// A block of 128 threads takes TPI tokens a thread and one split of K, and stages phi through
// shared memory in double-buffered chunks of 128 columns, as the WGSL kernel does.
//
// Ran on an H100 in calls 109-111 and 113; see docs/bench/h200-device-bench.log and
// PERFORMANCE.md's twenty-sixth session. Not part of mhc:
//   nvcc -O3 -arch=sm_90 -o twin project_twin.cu
//   ./twin               check and time every mode at four shapes
//   ./twin sweep         time mode 0 over splits, tokens a thread and a register cap (LB)
//   ncu --clock-control none ... -k regex:project -c 1 ./twin MODE SHAPE   (one launch)
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

constexpr int M = 24, CHUNK = 128, WG = 128;

__device__ __forceinline__ float lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

// MODE 0: the kernel; 1: phi operands made from registers (no shared-memory loads in the loop);
// 2: no x loads (x words made from the token index); 3: the kernel with its word loop unrolled 4x.
template <int TPI, int MODE, int LB = 1>
__global__ void __launch_bounds__(WG, LB) project(const uint4* __restrict__ x, const float4* __restrict__ phi,
                                              float* __restrict__ part, int T, int K, int splits) {
    __shared__ float4 sphi[2][M][CHUNK / 4];
    const int split = blockIdx.x % splits, tb = blockIdx.x / splits;
    const int klen = K / splits, k0 = split * klen, chunks = klen / CHUNK;
    const int tok0 = tb * WG * TPI + threadIdx.x;
    float acc[TPI][M], ss[TPI];
#pragma unroll
    for (int t = 0; t < TPI; t++) {
        ss[t] = 0.f;
#pragma unroll
        for (int m = 0; m < M; m++) acc[t][m] = 0.f;
    }
    auto stage = [&](int c, int buf) {
        for (int i = threadIdx.x; i < M * CHUNK / 4; i += WG) {
            int m = i / (CHUNK / 4), q = i % (CHUNK / 4);
            sphi[buf][m][q] = phi[(m * K + k0 + c * CHUNK) / 4 + q];
        }
    };
    stage(0, 0);
    __syncthreads();
    for (int c = 0; c < chunks; c++) {
        if (c + 1 < chunks) stage(c + 1, (c + 1) & 1);
        const int buf = c & 1;
        uint4 nxt[TPI];
        if (MODE == 4)
#pragma unroll
            for (int t = 0; t < TPI; t++) nxt[t] = x[((size_t)(tok0 + t * WG) * K + k0 + c * CHUNK) / 8];
#pragma unroll(MODE == 3 ? 4 : 1)
        for (int w = 0; w < CHUNK / 8; w++) {
            float xv[TPI][8];
#pragma unroll
            for (int t = 0; t < TPI; t++) {
                uint4 q;
                if (MODE == 4) {
                    q = nxt[t];
                    if (w + 1 < CHUNK / 8) nxt[t] = x[((size_t)(tok0 + t * WG) * K + k0 + c * CHUNK) / 8 + w + 1];
                } else if (MODE == 2) {
                    uint32_t s = (tok0 + t * WG) * 2654435761u + w;
                    q = make_uint4(s, s ^ 0x3f803f80u, s + 0x3c003c00u, s | 0x3e003e00u);
                } else {
                    q = x[((size_t)(tok0 + t * WG) * K + k0 + c * CHUNK) / 8 + w];
                }
                xv[t][0] = lo(q.x); xv[t][1] = hi(q.x); xv[t][2] = lo(q.y); xv[t][3] = hi(q.y);
                xv[t][4] = lo(q.z); xv[t][5] = hi(q.z); xv[t][6] = lo(q.w); xv[t][7] = hi(q.w);
#pragma unroll
                for (int j = 0; j < 8; j++) ss[t] = fmaf(xv[t][j], xv[t][j], ss[t]);
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float4 p0, p1;
                if (MODE == 1) {
                    float b = (float)(m + 1) * 1e-3f;
                    p0 = make_float4(b, b * 2.f, b * 3.f, b * 4.f);
                    p1 = make_float4(b * 5.f, b * 6.f, b * 7.f, b * 8.f);
                } else {
                    p0 = sphi[buf][m][2 * w];
                    p1 = sphi[buf][m][2 * w + 1];
                }
#pragma unroll
                for (int t = 0; t < TPI; t++) {
                    float a = acc[t][m];
                    a = fmaf(xv[t][0], p0.x, a); a = fmaf(xv[t][1], p0.y, a);
                    a = fmaf(xv[t][2], p0.z, a); a = fmaf(xv[t][3], p0.w, a);
                    a = fmaf(xv[t][4], p1.x, a); a = fmaf(xv[t][5], p1.y, a);
                    a = fmaf(xv[t][6], p1.z, a); a = fmaf(xv[t][7], p1.w, a);
                    acc[t][m] = a;
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int t = 0; t < TPI; t++) {
        float* o = part + ((size_t)split * T + tok0 + t * WG) * (M + 1);
#pragma unroll
        for (int m = 0; m < M; m++) o[m] = acc[t][m];
        o[M] = ss[t];
    }
}

// The FMA ceiling, as mhc's fma_rate: 8 independent vec4 chains an invocation.
__global__ void fma_rate(float* out, int iters) {
    float4 a[8];
    for (int i = 0; i < 8; i++) a[i] = make_float4(threadIdx.x * 1e-3f + i, 1.f, 2.f, 3.f);
    const float b = 0.999f, c = 1e-4f;
    for (int it = 0; it < iters; it++)
#pragma unroll
        for (int i = 0; i < 8; i++) {
            a[i].x = fmaf(a[i].x, b, c); a[i].y = fmaf(a[i].y, b, c);
            a[i].z = fmaf(a[i].z, b, c); a[i].w = fmaf(a[i].w, b, c);
        }
    float s = 0.f;
    for (int i = 0; i < 8; i++) s += a[i].x + a[i].y + a[i].z + a[i].w;
    if (s == 12345.f) out[0] = s;
}

template <typename F>
float median_us(F launch, int iters) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    for (int i = 0; i < 20; i++) launch();
    CK(cudaDeviceSynchronize());
    std::vector<float> ts;
    for (int i = 0; i < iters; i++) {
        CK(cudaEventRecord(a)); launch(); CK(cudaEventRecord(b)); CK(cudaEventSynchronize(b));
        float ms; CK(cudaEventElapsedTime(&ms, a, b)); ts.push_back(ms * 1000.f);
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

static uint16_t to_bf16(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return u >> 16; }

// The FMA ceiling of this card, TFLOP/s, printed as well.
static double fma_ceiling() {
    int sm; CK(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, 0));
    float* dummy; CK(cudaMalloc(&dummy, 4));
    const int fi = 4096, fblocks = sm * 8, fthreads = 256;
    float fus = median_us([&] { fma_rate<<<fblocks, fthreads>>>(dummy, fi); }, 50);
    double ceiling = 2.0 * 32 * fi * (double)fblocks * fthreads / (fus * 1e-6) / 1e12;
    printf("fma ceiling %.2f TFLOP/s (%.1f us)\n", ceiling, fus);
    CK(cudaFree(dummy));
    return ceiling;
}

// Random x (bf16, in [-1, 1)) and phi (in [-0.05, 0.05)) on the host and the device, and room
// for up to `splits` partial sums a token.
struct Inputs {
    int T, K;
    std::vector<uint16_t> hx;
    std::vector<float> hphi;
    uint4* dx;
    float4* dphi;
    float* dpart;
    Inputs(int T_, int K_, int splits) : T(T_), K(K_), hx((size_t)T_ * K_), hphi((size_t)M * K_) {
        uint64_t r = 88172645463325252ull;
        auto rnd = [&] { r ^= r << 13; r ^= r >> 7; r ^= r << 17; return (float)((r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f; };
        for (auto& v : hx) v = to_bf16(rnd());
        for (auto& v : hphi) v = rnd() * 0.05f;
        CK(cudaMalloc(&dx, hx.size() * 2)); CK(cudaMalloc(&dphi, hphi.size() * 4));
        CK(cudaMalloc(&dpart, (size_t)splits * T * (M + 1) * 4));
        CK(cudaMemcpy(dx, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dphi, hphi.data(), hphi.size() * 4, cudaMemcpyHostToDevice));
    }
    ~Inputs() { cudaFree(dx); cudaFree(dphi); cudaFree(dpart); }
};

// Mode 0 over splits of K, tokens a thread and __launch_bounds__' minimum blocks an SM (LB):
// do more warps an SM lift the loop?
int sweep() {
    const double ceiling = fma_ceiling();
    for (int T : {4096, 16384}) {
        const int K = T == 4096 ? 10240 : 16384;
        Inputs in(T, K, 128);
        uint4* dx = in.dx; float4* dphi = in.dphi; float* dpart = in.dpart;
        double flops = 2.0 * T * (double)K * (M + 1);
        for (int tpi : {1, 2, 4}) for (int lb : {1, 2, 3, 4}) for (int splits : {8, 16, 20, 32, 40, 64, 80}) {
            if (K / splits % CHUNK) continue;
            int blocks = splits * (T / (WG * tpi));
            auto run = [&] {
#define L(tp, b) project<tp, 0, b><<<blocks, WG>>>(dx, dphi, dpart, T, K, splits)
                switch (tpi * 10 + lb) {
                    case 11: L(1, 1); break; case 12: L(1, 2); break; case 13: L(1, 3); break; case 14: L(1, 4); break;
                    case 21: L(2, 1); break; case 22: L(2, 2); break; case 23: L(2, 3); break; case 24: L(2, 4); break;
                    case 41: L(4, 1); break; case 42: L(4, 2); break; case 43: L(4, 3); break; case 44: L(4, 4); break;
                }
#undef L
            };
            run(); CK(cudaGetLastError());
            float us = median_us(run, 50);
            printf("T %5d K %5d tpi %d minblocks %d splits %2d blocks %4d: %7.1f us, %.2fx the fma ceiling's time\n", T, K, tpi, lb,
                   splits, blocks, us, us / (flops / (ceiling * 1e12) * 1e6));
        }
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 2 && !strcmp(argv[1], "sweep")) return sweep();
    // With arguments MODE SHAPE: one launch of that kernel, for ncu.
    const int only_mode = argc > 2 ? atoi(argv[1]) : -1, only_shape = argc > 2 ? atoi(argv[2]) : -1;
    int shape_index = 0;
    const double ceiling = fma_ceiling();
    struct Shape { int T, K, splits, tpi; };
    for (Shape s : {Shape{4096, 10240, 16, 2}, Shape{4096, 10240, 16, 4}, Shape{16384, 16384, 16, 2}, Shape{16384, 16384, 8, 4}}) {
        Inputs in(s.T, s.K, s.splits);
        uint4* dx = in.dx; float4* dphi = in.dphi; float* dpart = in.dpart;
        const std::vector<uint16_t>& hx = in.hx; const std::vector<float>& hphi = in.hphi;
        int blocks = s.splits * (s.T / (WG * s.tpi));
        double flops = 2.0 * s.T * (double)s.K * (M + 1);
        auto run = [&](int mode) {
#define L(tp, md) project<tp, md><<<blocks, WG>>>(dx, dphi, dpart, s.T, s.K, s.splits)
            switch (s.tpi * 10 + mode) {
                case 24: L(2, 4); break; case 44: L(4, 4); break; case 20: L(2, 0); break; case 21: L(2, 1); break; case 22: L(2, 2); break; case 23: L(2, 3); break;
                case 40: L(4, 0); break; case 41: L(4, 1); break; case 42: L(4, 2); break; case 43: L(4, 3); break;
            }
#undef L
        };
        if (only_mode >= 0) {
            if (shape_index++ != only_shape) continue;
            run(only_mode); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
            break;
        }
        // Check mode 0 against f64 on the host for a few tokens.
        CK(cudaMemset(dpart, 0xff, (size_t)s.splits * s.T * (M + 1) * 4));
        run(0); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
        std::vector<float> hp((size_t)s.splits * s.T * (M + 1));
        CK(cudaMemcpy(hp.data(), dpart, hp.size() * 4, cudaMemcpyDeviceToHost));
        double worst = 0;
        for (int tok : {0, 1, 127, 128, 129, s.T / 2 + 77, s.T - 1}) {
            for (int m = 0; m <= M; m++) {
                double ref = 0, got = 0, mag = 0;
                for (int k = 0; k < s.K; k++) {
                    uint32_t u = (uint32_t)hx[(size_t)tok * s.K + k] << 16; float xv; memcpy(&xv, &u, 4);
                    double p = m < M ? hphi[(size_t)m * s.K + k] : xv;
                    ref += xv * p; mag += fabs(xv * p);
                }
                for (int sp = 0; sp < s.splits; sp++) got += hp[((size_t)sp * s.T + tok) * (M + 1) + m];
                worst = std::max(worst, fabs(got - ref) / mag);
            }
        }
        printf("T %d K %d splits %d tpi %d blocks %d: check worst |err|/sum|terms| %.2e %s\n", s.T, s.K, s.splits, s.tpi,
               blocks, worst, worst < 1e-5 ? "PASS" : "FAIL");
        for (int mode = 0; mode < 5; mode++) {
            float us = median_us([&] { run(mode); }, 100);
            printf("  mode %d (%s): %.1f us, %.2f TFLOP/s, %.2fx the fma ceiling's time\n", mode,
                   mode == 0 ? "kernel" : mode == 1 ? "phi from registers" : mode == 2 ? "no x loads" : mode == 3 ? "unrolled 4x" : "x a word ahead", us, flops / (us * 1e-6) / 1e12,
                   us / (flops / (ceiling * 1e12) * 1e6));
        }
    }
    return 0;
}
