# The layout rules of docs/architecture.md, checked on include/moe (cmake -P, run by CTest):
#   - a header includes only headers of its own floor or of a lower one (floors below);
#   - no header is longer than 300 lines;
#   - Eigen::internal appears only in kernels/blocking.hpp;
#   - PackedExpert is named only by the experts and the runner.
# Run from anywhere: cmake -DROOT=<source dir> -P tests/include_rules.cmake

cmake_minimum_required(VERSION 3.25)

if(NOT ROOT)
  get_filename_component(ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
endif()
set(include_dir "${ROOT}/include")

# Floor of a header, from its path under include/ (the first pattern that matches).
function(floor_of path out)
  set(floors
    "0:moe/(version|errors|types|random|routing|param_bank|parameters|concepts|isa)\\.hpp$"
    "0:moe/detail/"
    "2:moe/kernels/"
    "2:moe/io/(dtype|npy|safetensors|safetensors_writer|write_options)\\.hpp$"
    "2:moe/io/detail/"
    "3:moe/experts/"
    "3:moe/gating/"
    "4:moe/dispatch/"
    "4:moe/loss/"
    "4:moe/train/"
    "5:moe/layer/"
    "5:moe/testing/"
    "6:moe/io/"
    "7:moe/mpi/"
    "8:moe/moe\\.hpp$")
  foreach(entry IN LISTS floors)
    string(REGEX MATCH "^([0-9]+):(.*)$" _ "${entry}")
    set(level "${CMAKE_MATCH_1}")
    set(pattern "${CMAKE_MATCH_2}")
    if(path MATCHES "^${pattern}" OR path MATCHES "^${pattern}.*")
      set(${out} "${level}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

file(GLOB_RECURSE headers RELATIVE "${include_dir}" "${include_dir}/moe/*.hpp")
set(problems "")
foreach(header IN LISTS headers)
  floor_of("${header}" floor)
  if(floor STREQUAL "")
    list(APPEND problems "${header}: on no floor (add it to tests/include_rules.cmake and docs/architecture.md)")
    continue()
  endif()
  file(READ "${include_dir}/${header}" text)
  string(REGEX REPLACE "[^\n]" "" newlines "${text}")
  string(LENGTH "${newlines}" count)
  if(count GREATER 300)
    list(APPEND problems "${header}: ${count} lines (at most 300)")
  endif()
  file(STRINGS "${include_dir}/${header}" includes REGEX "^#include \"moe/")
  foreach(line IN LISTS includes)
    if(line MATCHES "^#include \"(moe/[^\"]+)\"")
      set(target "${CMAKE_MATCH_1}")
      floor_of("${target}" target_floor)
      if(target_floor STREQUAL "")
        list(APPEND problems "${header}: includes ${target}, which is on no floor")
      elseif(target_floor GREATER floor)
        list(APPEND problems "${header} (floor ${floor}) includes ${target} (floor ${target_floor})")
      endif()
    endif()
  endforeach()
  if(text MATCHES "Eigen::internal" AND NOT header STREQUAL "moe/kernels/blocking.hpp")
    list(APPEND problems "${header}: uses Eigen::internal (only kernels/blocking.hpp may)")
  endif()
  if(text MATCHES "PackedExpert" AND NOT header MATCHES "^moe/experts/" AND NOT header STREQUAL "moe/dispatch/runner.hpp")
    list(APPEND problems "${header}: names PackedExpert (only the experts and the runner may)")
  endif()
endforeach()

if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "include rules broken:\n  ${text}")
endif()
list(LENGTH headers n)
message(STATUS "include rules hold for ${n} headers")
