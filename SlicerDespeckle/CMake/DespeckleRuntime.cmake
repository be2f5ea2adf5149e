# What the Despeckle module runs, copied from this repository into the module's folder:
# the part of the usdespeckle library that `python -m usdespeckle run` imports, and the shipped
# denoiser (ONNX export for ONNX Runtime; TorchScript for the optional PyTorch backend) with the
# bundle metadata that holds its sha256 checksums. In the module they sit side by side under
# SlicerDespeckleLib/runtime/, so the library finds the bundle as it does in a checkout
# (usdespeckle/../monai_bundle) and needs no PYTHONPATH beyond that folder.
#
# Used two ways:
#   include() from SlicerDespeckle/CMakeLists.txt, which copies the two lists with despeckle_copy_files;
#   cmake -DREPOSITORY_DIR=<repository> -DDESTINATION_DIR=<folder> -P DespeckleRuntime.cmake
#     (the tests build the shipped runtime this way, so they check exactly what the extension ships).

set(DESPECKLE_RUNTIME_SUBDIR "SlicerDespeckleLib/runtime")

# Imported by `usdespeckle run` (numpy, SimpleITK; scipy for the classical filters; onnxruntime or
# torch for the denoiser; the standard library for the MONAI Label client).
set(DESPECKLE_RUNTIME_LIBRARY_FILES
  usdespeckle/__init__.py
  usdespeckle/__main__.py
  usdespeckle/cli.py
  usdespeckle/options.py
  usdespeckle/errors.py
  usdespeckle/commands/__init__.py
  usdespeckle/commands/run.py
  usdespeckle/inference.py
  usdespeckle/denoiser.py
  usdespeckle/slicewise.py
  usdespeckle/io.py
  usdespeckle/io_checks.py
  usdespeckle/io_headers.py
  usdespeckle/atomic.py
  usdespeckle/bundle_utils.py
  usdespeckle/filters.py
  usdespeckle/filters_nlm.py
  usdespeckle/_filter_utils.py
  usdespeckle/filters_bm3d.py
  usdespeckle/filters_noise.py
  usdespeckle/client.py
  )

set(DESPECKLE_RUNTIME_BUNDLE_FILES
  monai_bundle/configs/metadata.json
  monai_bundle/models/model.onnx
  monai_bundle/models/model.ts
  )

# Copy files (paths relative to repository_dir) into destination_dir, keeping their relative
# paths; configure_file reruns the configuration when a source file changes.
function(despeckle_copy_files repository_dir destination_dir)
  foreach(file IN LISTS ARGN)
    if(NOT EXISTS "${repository_dir}/${file}")
      message(FATAL_ERROR "Despeckle runtime: ${repository_dir}/${file} is missing; build from a full checkout")
    endif()
    configure_file("${repository_dir}/${file}" "${destination_dir}/${file}" COPYONLY)
  endforeach()
endfunction()

# The whole runtime (library code and bundle files) into destination_dir.
function(despeckle_copy_runtime repository_dir destination_dir)
  despeckle_copy_files("${repository_dir}" "${destination_dir}"
    ${DESPECKLE_RUNTIME_LIBRARY_FILES} ${DESPECKLE_RUNTIME_BUNDLE_FILES})
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEFINED REPOSITORY_DIR OR NOT DEFINED DESTINATION_DIR)
    message(FATAL_ERROR "usage: cmake -DREPOSITORY_DIR=<repository> -DDESTINATION_DIR=<folder> -P DespeckleRuntime.cmake")
  endif()
  despeckle_copy_runtime("${REPOSITORY_DIR}" "${DESTINATION_DIR}")
endif()
