# What the Despeckle module runs, copied from this repository into the module's folder:
# the usdespeckle library's runtime layer (usdespeckle/runtime/, all of it) with the command line
# that runs it (`python -m usdespeckle run`), and the shipped
# denoiser (ONNX export for ONNX Runtime; TorchScript for the optional PyTorch backend) with the
# bundle metadata that holds its sha256 checksums. In the module they sit side by side under
# SlicerDespeckleLib/runtime/, so the library finds the bundle as it does in a checkout
# (usdespeckle/../monai_bundle) and needs no PYTHONPATH beyond that folder.
#
# Used two ways:
#   include() from SlicerDespeckle/CMakeLists.txt, which copies the library files
#     (despeckle_runtime_library_files) and the bundle files with despeckle_copy_files;
#   cmake -DREPOSITORY_DIR=<repository> -DDESTINATION_DIR=<folder> -P DespeckleRuntime.cmake
#     (the tests build the shipped runtime this way, so they check exactly what the extension ships).

set(DESPECKLE_RUNTIME_SUBDIR "SlicerDespeckleLib/runtime")

# The command line, imported by `python -m usdespeckle run` before the runtime layer (numpy,
# SimpleITK; scipy for the classical filters; onnxruntime or torch for the denoiser; the standard
# library for the MONAI Label client) ...
set(DESPECKLE_RUNTIME_LIBRARY_FILES
  usdespeckle/__init__.py
  usdespeckle/__main__.py
  usdespeckle/cli.py
  usdespeckle/commands/__init__.py
  usdespeckle/commands/run.py
  )
# ... and the whole runtime layer, usdespeckle/runtime/ (the library's lowest layer, which imports
# nothing above it: tests/test_architecture.py), found by a glob so that no file list follows its
# imports by hand.
set(DESPECKLE_RUNTIME_LAYER_DIR usdespeckle/runtime)

set(DESPECKLE_RUNTIME_BUNDLE_FILES
  monai_bundle/configs/metadata.json
  monai_bundle/models/model.onnx
  monai_bundle/models/model.ts
  )

# The library files the module carries (relative to repository_dir) into output_variable: the
# command line's files and every .py file under usdespeckle/runtime/.
# A new file there reruns the configuration (CONFIGURE_DEPENDS, which `cmake -P` does not accept).
function(despeckle_runtime_library_files output_variable repository_dir)
  set(_rerun CONFIGURE_DEPENDS)
  if(CMAKE_SCRIPT_MODE_FILE)
    set(_rerun "")
  endif()
  file(GLOB_RECURSE _layer RELATIVE "${repository_dir}" ${_rerun}
    "${repository_dir}/${DESPECKLE_RUNTIME_LAYER_DIR}/*.py")
  list(SORT _layer)
  set(${output_variable} ${DESPECKLE_RUNTIME_LIBRARY_FILES} ${_layer} PARENT_SCOPE)
endfunction()

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
  despeckle_runtime_library_files(_library "${repository_dir}")
  despeckle_copy_files("${repository_dir}" "${destination_dir}" ${_library} ${DESPECKLE_RUNTIME_BUNDLE_FILES})
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEFINED REPOSITORY_DIR OR NOT DEFINED DESTINATION_DIR)
    message(FATAL_ERROR "usage: cmake -DREPOSITORY_DIR=<repository> -DDESTINATION_DIR=<folder> -P DespeckleRuntime.cmake")
  endif()
  despeckle_copy_runtime("${REPOSITORY_DIR}" "${DESTINATION_DIR}")
endif()
