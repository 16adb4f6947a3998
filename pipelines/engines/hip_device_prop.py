"""``hipDeviceProp_tR0600``: what ``hipGetDevicePropertiesR0600`` fills in, as a ctypes structure.

Since ROCm 6.0 ``hipGetDeviceProperties`` is a macro for ``hipGetDevicePropertiesR0600`` and
``hipDeviceProp_t`` for ``hipDeviceProp_tR0600`` (``hip/hip_runtime_api.h``): the versioned symbol names a
frozen layout, so calling that symbol with this structure is safe on every ROCm from 6.0 on, whatever
later releases add under a new name. Field for field from the header (1472 bytes on x86-64; the offsets
of ``multiProcessorCount``, 388, and ``gcnArchName``, 1160, agree with a C compiler's).
"""

from __future__ import annotations

from ctypes import Structure, c_char, c_int, c_size_t, c_uint, c_void_p

SYMBOL = "hipGetDevicePropertiesR0600"


class HipDeviceProp(Structure):
    _fields_ = [
        ("name", c_char * 256), ("uuid", c_char * 16), ("luid", c_char * 8), ("luidDeviceNodeMask", c_uint),
        ("totalGlobalMem", c_size_t), ("sharedMemPerBlock", c_size_t), ("regsPerBlock", c_int), ("warpSize", c_int),
        ("memPitch", c_size_t), ("maxThreadsPerBlock", c_int), ("maxThreadsDim", c_int * 3),
        ("maxGridSize", c_int * 3), ("clockRate", c_int), ("totalConstMem", c_size_t), ("major", c_int),
        ("minor", c_int), ("textureAlignment", c_size_t), ("texturePitchAlignment", c_size_t),
        ("deviceOverlap", c_int), ("multiProcessorCount", c_int), ("kernelExecTimeoutEnabled", c_int),
        ("integrated", c_int), ("canMapHostMemory", c_int), ("computeMode", c_int), ("maxTexture1D", c_int),
        ("maxTexture1DMipmap", c_int), ("maxTexture1DLinear", c_int), ("maxTexture2D", c_int * 2),
        ("maxTexture2DMipmap", c_int * 2), ("maxTexture2DLinear", c_int * 3), ("maxTexture2DGather", c_int * 2),
        ("maxTexture3D", c_int * 3), ("maxTexture3DAlt", c_int * 3), ("maxTextureCubemap", c_int),
        ("maxTexture1DLayered", c_int * 2), ("maxTexture2DLayered", c_int * 3),
        ("maxTextureCubemapLayered", c_int * 2), ("maxSurface1D", c_int), ("maxSurface2D", c_int * 2),
        ("maxSurface3D", c_int * 3), ("maxSurface1DLayered", c_int * 2), ("maxSurface2DLayered", c_int * 3),
        ("maxSurfaceCubemap", c_int), ("maxSurfaceCubemapLayered", c_int * 2), ("surfaceAlignment", c_size_t),
        ("concurrentKernels", c_int), ("ECCEnabled", c_int), ("pciBusID", c_int), ("pciDeviceID", c_int),
        ("pciDomainID", c_int), ("tccDriver", c_int), ("asyncEngineCount", c_int), ("unifiedAddressing", c_int),
        ("memoryClockRate", c_int), ("memoryBusWidth", c_int), ("l2CacheSize", c_int),
        ("persistingL2CacheMaxSize", c_int), ("maxThreadsPerMultiProcessor", c_int),
        ("streamPrioritiesSupported", c_int), ("globalL1CacheSupported", c_int), ("localL1CacheSupported", c_int),
        ("sharedMemPerMultiprocessor", c_size_t), ("regsPerMultiprocessor", c_int), ("managedMemory", c_int),
        ("isMultiGpuBoard", c_int), ("multiGpuBoardGroupID", c_int), ("hostNativeAtomicSupported", c_int),
        ("singleToDoublePrecisionPerfRatio", c_int), ("pageableMemoryAccess", c_int),
        ("concurrentManagedAccess", c_int), ("computePreemptionSupported", c_int),
        ("canUseHostPointerForRegisteredMem", c_int), ("cooperativeLaunch", c_int),
        ("cooperativeMultiDeviceLaunch", c_int), ("sharedMemPerBlockOptin", c_size_t),
        ("pageableMemoryAccessUsesHostPageTables", c_int), ("directManagedMemAccessFromHost", c_int),
        ("maxBlocksPerMultiProcessor", c_int), ("accessPolicyMaxWindowSize", c_int),
        ("reservedSharedMemPerBlock", c_size_t), ("hostRegisterSupported", c_int), ("sparseHipArraySupported", c_int),
        ("hostRegisterReadOnlySupported", c_int), ("timelineSemaphoreInteropSupported", c_int),
        ("memoryPoolsSupported", c_int), ("gpuDirectRDMASupported", c_int),
        ("gpuDirectRDMAFlushWritesOptions", c_uint), ("gpuDirectRDMAWritesOrdering", c_int),
        ("memoryPoolSupportedHandleTypes", c_uint), ("deferredMappingHipArraySupported", c_int),
        ("ipcEventSupported", c_int), ("clusterLaunch", c_int), ("unifiedFunctionPointers", c_int),
        ("reserved", c_int * 63), ("hipReserved", c_int * 32), ("gcnArchName", c_char * 256),
        ("maxSharedMemoryPerMultiProcessor", c_size_t), ("clockInstructionRate", c_int), ("arch", c_uint),
        ("hdpMemFlushCntl", c_void_p), ("hdpRegFlushCntl", c_void_p), ("cooperativeMultiDeviceUnmatchedFunc", c_int),
        ("cooperativeMultiDeviceUnmatchedGridDim", c_int), ("cooperativeMultiDeviceUnmatchedBlockDim", c_int),
        ("cooperativeMultiDeviceUnmatchedSharedMem", c_int), ("isLargeBar", c_int), ("asicRevision", c_int),
    ]
