# Finds moe's dependencies and, when allowed, installs the missing ones from Debian.
#
#   moe_find_package(<find_package arguments>... DESCRIPTION <text> DEBIAN_PACKAGE <package>...)
#
# Runs find_package(<find_package arguments>...). If the package is missing, MOE_AUTO_INSTALL_DEPS
# is ON, we run as root and apt-get exists, runs `apt-get install -y <package>` (after one
# `apt-get update` per configure run) and looks again. Otherwise stops with the command to run.

include_guard(GLOBAL)

function(moe_find_package package)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "DESCRIPTION" "DEBIAN_PACKAGE")
  set(find_arguments ${package} ${arg_UNPARSED_ARGUMENTS})
  string(JOIN " " packages ${arg_DEBIAN_PACKAGE})

  find_package(${find_arguments} QUIET)
  if(${package}_FOUND)
    return()
  endif()

  if(NOT MOE_AUTO_INSTALL_DEPS)
    set(why "or configure as root with -DMOE_AUTO_INSTALL_DEPS=ON, as the presets do")
  else()
    execute_process(COMMAND id -u OUTPUT_VARIABLE uid OUTPUT_STRIP_TRAILING_WHITESPACE)
    find_program(apt_get apt-get NO_CACHE)
    if(NOT uid STREQUAL "0")
      set(why "MOE_AUTO_INSTALL_DEPS is ON, but installing packages needs root")
    elseif(NOT apt_get)
      set(why "MOE_AUTO_INSTALL_DEPS is ON, but there is no apt-get to install it with")
    else()
      moe_apt_get(update)
      moe_apt_get(install -y --no-install-recommends ${arg_DEBIAN_PACKAGE})
      find_package(${find_arguments} QUIET)
      if(${package}_FOUND)
        return()
      endif()
      set(why "apt-get installed ${packages}, but find_package(${find_arguments}) still fails")
    endif()
  endif()
  # The indented line keeps its spacing in CMake's output, so it can be copied as it is.
  message(FATAL_ERROR
    "moe needs ${arg_DESCRIPTION}: run\n  sudo apt-get install ${packages}\n(${why})")
endfunction()

# Runs `apt-get <arguments>...` without questions; `update` runs at most once per configure run.
function(moe_apt_get)
  if(ARGV0 STREQUAL "update")
    get_property(updated GLOBAL PROPERTY moe_apt_updated)
    if(updated)
      return()
    endif()
    set_property(GLOBAL PROPERTY moe_apt_updated TRUE)
  endif()
  string(JOIN " " command apt-get ${ARGV})
  message(STATUS "moe: ${command}")
  execute_process(
    COMMAND ${CMAKE_COMMAND} -E env DEBIAN_FRONTEND=noninteractive apt-get ${ARGV}
    RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "moe: `${command}` failed (${result})")
  endif()
endfunction()
