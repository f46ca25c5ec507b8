// Device properties for the launchers, read once per device and cached.
#include <array>
#include <mutex>

#include "cuda_kernels.h"

namespace jaxcsb::cuda {
namespace {

constexpr int kMaxDevices = 64;

struct Cache {
  std::array<std::once_flag, kMaxDevices> once;
  std::array<DeviceInfo, kMaxDevices> info;
  std::array<cudaError_t, kMaxDevices> status;
};

Cache& cache() {
  static Cache c;  // thread-safe initialisation (C++11 magic statics)
  return c;
}

cudaError_t query(int device, DeviceInfo* info) {
  info->device = device;
  cudaError_t err = cudaDeviceGetAttribute(&info->num_sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&info->max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                               device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&info->smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                               device);
  if (err != cudaSuccess) return err;
  err =
      cudaDeviceGetAttribute(&info->smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, device);
  if (err != cudaSuccess) return err;
  int cluster_launch = 0;
  err = cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device);
  info->cluster_launch = cluster_launch != 0;
  return err;
}

}  // namespace

cudaError_t device_info(cudaStream_t stream, DeviceInfo* info) {
  int device = 0;
  cudaError_t err = stream ? cudaStreamGetDevice(stream, &device) : cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < 0 || device >= kMaxDevices) return query(device, info);
  Cache& c = cache();
  std::call_once(c.once[device], [&] { c.status[device] = query(device, &c.info[device]); });
  *info = c.info[device];
  return c.status[device];
}

}  // namespace jaxcsb::cuda
