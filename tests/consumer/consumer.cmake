# The part every consumer project shares once it has made moe::moe available its own way.
add_executable(consumer "${CMAKE_CURRENT_LIST_DIR}/main.cpp")
target_link_libraries(consumer PRIVATE moe::moe)
target_compile_definitions(consumer PRIVATE MOE_EXPECTED_VERSION="${MOE_EXPECTED_VERSION}")

# moe is not the top-level project here, so it must leave its tests, examples, benchmarks and tools out.
foreach(option IN ITEMS MOE_BUILD_TESTS MOE_BUILD_EXAMPLES MOE_BUILD_BENCHMARKS MOE_BUILD_TOOLS)
  if(${option})
    message(FATAL_ERROR "${option} is ON although moe is not the top-level project")
  endif()
endforeach()
