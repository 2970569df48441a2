// GPU check, step "cuda" (tests/gpu/run.sh): compiled by nvcc on the host and run on GPU 0.
// cudaMalloc three buffers, add two vectors in a kernel, copy back and compare every element on the CPU.
// Prints one line starting with "OK " (device, compute capability, runtime and driver versions) and
// exits 0, or one line starting with "ERROR " and exits 1.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(call)                                                                     \
  do {                                                                                  \
    cudaError_t err_ = (call);                                                          \
    if (err_ != cudaSuccess) {                                                          \
      std::printf("ERROR %s: %s (%s)\n", #call, cudaGetErrorString(err_),               \
                  cudaGetErrorName(err_));                                              \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

__global__ void vector_add(const float *a, const float *b, float *c, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + b[i];
}

int main() {
  const int n = 1 << 22;  // 4 Mi elements, 16 MiB per buffer
  const size_t bytes = n * sizeof(float);
  int device = 0, runtime = 0, driver = 0;
  cudaDeviceProp prop;
  CHECK(cudaSetDevice(device));
  CHECK(cudaGetDeviceProperties(&prop, device));
  CHECK(cudaRuntimeGetVersion(&runtime));
  CHECK(cudaDriverGetVersion(&driver));

  float *a = (float *)std::malloc(bytes), *b = (float *)std::malloc(bytes), *c = (float *)std::malloc(bytes);
  if (!a || !b || !c) {
    std::printf("ERROR host malloc of %zu bytes failed\n", bytes);
    return 1;
  }
  for (int i = 0; i < n; ++i) {
    a[i] = (float)i;
    b[i] = 2.0f * (float)(n - i);
    c[i] = -1.0f;
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr;
  CHECK(cudaMalloc(&da, bytes));
  CHECK(cudaMalloc(&db, bytes));
  CHECK(cudaMalloc(&dc, bytes));
  CHECK(cudaMemcpy(da, a, bytes, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, b, bytes, cudaMemcpyHostToDevice));
  const int threads = 256, blocks = (n + threads - 1) / threads;
  vector_add<<<blocks, threads>>>(da, db, dc, n);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaMemcpy(c, dc, bytes, cudaMemcpyDeviceToHost));

  int wrong = 0, first = -1;
  float got = 0.0f, want = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (c[i] != a[i] + b[i]) {
      if (first < 0) {
        first = i;
        got = c[i];
        want = a[i] + b[i];
      }
      ++wrong;
    }
  }
  CHECK(cudaFree(da));
  CHECK(cudaFree(db));
  CHECK(cudaFree(dc));
  std::free(a);
  std::free(b);
  std::free(c);
  if (wrong) {
    std::printf("ERROR %d of %d sums wrong, first at %d: got %g, expected %g\n", wrong, n, first, got, want);
    return 1;
  }
  std::printf("OK device=\"%s\" cc=%d.%d n=%d bytes=%zu runtime=%d driver=%d\n", prop.name, prop.major, prop.minor, n,
              3 * bytes, runtime, driver);
  return 0;
}
