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
# library for the MONAI Label client; pyigtl for `usdespeckle stream`, the live mode, installed on
# first use) ...
set(DESPECKLE_RUNTIME_LIBRARY_FILES
  usdespeckle/__init__.py
  usdespeckle/__main__.py
  usdespeckle/cli.py
  usdespeckle/commands/__init__.py
  usdespeckle/commands/run.py
  usdespeckle/commands/stream.py
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

# Download the bundle files of a release repository (made by training/export_extension.py, which
# writes CMake/DespeckleModelFiles.cmake) into destination_dir, each checked against its sha256:
#   despeckle_fetch_files(<base URL> <destination_dir> <file> <sha256> [<file> <sha256> ...])
# <file> is a path relative to the repository (monai_bundle/models/model.onnx); it is fetched from
# <base URL>/<file name>. A file already there with the right checksum is not fetched again.
function(despeckle_fetch_files base_url destination_dir)
  set(pairs ${ARGN})
  list(LENGTH pairs count)
  math(EXPR odd "${count} % 2")
  if(count EQUAL 0 OR odd)
    message(FATAL_ERROR "Despeckle: despeckle_fetch_files needs <file> <sha256> pairs, got: ${pairs}")
  endif()
  math(EXPR last "${count} - 2")
  foreach(index RANGE 0 ${last} 2)
    math(EXPR next "${index} + 1")
    list(GET pairs ${index} file)
    list(GET pairs ${next} sha256)
    get_filename_component(name "${file}" NAME)
    set(destination "${destination_dir}/${file}")
    if(EXISTS "${destination}")
      file(SHA256 "${destination}" found)
      if(found STREQUAL sha256)
        continue()
      endif()
      file(REMOVE "${destination}")
    endif()
    set(url "${base_url}/${name}")
    message(STATUS "Despeckle: fetching ${url} (sha256 ${sha256})")
    file(DOWNLOAD "${url}" "${destination}.part" EXPECTED_HASH SHA256=${sha256} STATUS status)
    list(GET status 0 code)
    if(NOT code EQUAL 0 OR NOT EXISTS "${destination}.part")
      list(GET status 1 reason)
      file(REMOVE "${destination}.part")
      message(FATAL_ERROR "Despeckle: could not download ${url} (${reason}). Check DESPECKLE_MODEL_BASE_URL "
        "or put the file, with sha256 ${sha256}, at ${destination}.")
    endif()
    file(SHA256 "${destination}.part" found)
    if(NOT found STREQUAL sha256)  # CMake reports the mismatch too; never keep the wrong file
      file(REMOVE "${destination}.part")
      message(FATAL_ERROR "Despeckle: ${url} has sha256 ${found}, not the ${sha256} this release was made "
        "for: the release file changed or the URL is wrong (DESPECKLE_MODEL_BASE_URL).")
    endif()
    file(RENAME "${destination}.part" "${destination}")
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
