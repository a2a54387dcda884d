# Runs one consumer test (see CMakeLists.txt next to this file). Two modes:
#
#   cmake -D INSTALL_FROM=<moe build dir> -D PREFIX=<dir> -P run_consumer.cmake
#     installs moe from its build tree into a fresh PREFIX;
#
#   cmake -D SOURCE_DIR=<consumer project> -D BINARY_DIR=<dir> -D GENERATOR=<generator>
#         -D CXX_COMPILER=<c++> -D MOE_SOURCE_DIR=<moe> -D MOE_EXPECTED_VERSION=<x.y.z>
#         -D PREFIX=<dir> -P run_consumer.cmake
#     configures the consumer project in a fresh BINARY_DIR (PREFIX goes to CMAKE_PREFIX_PATH),
#     builds it and runs the program it makes.
#
# A failing step stops the script and prints that step's output.

function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    string(REPLACE ";" " " command "${ARGN}")
    message("${output}")
    message(FATAL_ERROR "${step} failed (${result}): ${command}")
  endif()
  message(STATUS "${step}: ok")
  set(output "${output}" PARENT_SCOPE)
endfunction()

if(DEFINED INSTALL_FROM)
  file(REMOVE_RECURSE "${PREFIX}")
  run(install "${CMAKE_COMMAND}" --install "${INSTALL_FROM}" --prefix "${PREFIX}")
  return()
endif()

file(REMOVE_RECURSE "${BINARY_DIR}")
run(configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
    -D "CMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -D CMAKE_BUILD_TYPE=Release
    -D "CMAKE_PREFIX_PATH=${PREFIX}"
    -D "MOE_SOURCE_DIR=${MOE_SOURCE_DIR}"
    -D "MOE_EXPECTED_VERSION=${MOE_EXPECTED_VERSION}")
run(build "${CMAKE_COMMAND}" --build "${BINARY_DIR}")
run(run "${BINARY_DIR}/consumer")
string(STRIP "${output}" output)
message("${output}")
