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
# torch for the denoiser; the standard library for the MONAI Label client) and by `usdespeckle
# stream`, the live mode (pyigtl, installed on first use).
set(DESPECKLE_RUNTIME_LIBRARY_FILES
  usdespeckle/__init__.py
  usdespeckle/__main__.py
  usdespeckle/cli.py
  usdespeckle/options.py
  usdespeckle/errors.py
  usdespeckle/commands/__init__.py
  usdespeckle/commands/run.py
  usdespeckle/commands/stream.py
  usdespeckle/stream.py
  usdespeckle/stream_link.py
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
  despeckle_copy_files("${repository_dir}" "${destination_dir}"
    ${DESPECKLE_RUNTIME_LIBRARY_FILES} ${DESPECKLE_RUNTIME_BUNDLE_FILES})
endfunction()

if(CMAKE_SCRIPT_MODE_FILE AND CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEFINED REPOSITORY_DIR OR NOT DEFINED DESTINATION_DIR)
    message(FATAL_ERROR "usage: cmake -DREPOSITORY_DIR=<repository> -DDESTINATION_DIR=<folder> -P DespeckleRuntime.cmake")
  endif()
  despeckle_copy_runtime("${REPOSITORY_DIR}" "${DESTINATION_DIR}")
endif()
