# modelcast_thrift_library(<target> IDL <file.thrift>...)
#
# Also generates the Python bindings into <binary dir>/gen-py (target <target>_py, built by
# default), for Python clients such as an autoscaler: Debian's python3-thrift runs them.
#
# Generates C++ from each IDL with the thrift compiler at build time (re-run when the IDL
# changes) and compiles it into a static library whose users include "<name>_types.h" and
# "<Service>.h". The generated file list is derived from the IDL: <name>_types, plus
# <name>_constants when it declares constants, plus one pair per service.
function(modelcast_thrift_library target)
  cmake_parse_arguments(ARG "" "" "IDL" ${ARGN})
  set(out_dir ${CMAKE_CURRENT_BINARY_DIR}/gen-cpp)
  file(MAKE_DIRECTORY ${out_dir})
  set(sources)
  foreach(idl IN LISTS ARG_IDL)
    get_filename_component(idl_abs ${idl} ABSOLUTE)
    get_filename_component(name ${idl} NAME_WE)
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${idl_abs})
    file(READ ${idl_abs} text)
    set(outs ${out_dir}/${name}_types.cpp ${out_dir}/${name}_types.h)
    if(text MATCHES "(^|\n)[ \t]*const[ \t]")
      list(APPEND outs ${out_dir}/${name}_constants.cpp ${out_dir}/${name}_constants.h)
    endif()
    string(REGEX MATCHALL "(^|\n)[ \t]*service[ \t]+[A-Za-z_][A-Za-z0-9_]*" services "${text}")
    foreach(s IN LISTS services)
      string(REGEX REPLACE ".*service[ \t]+" "" s "${s}")
      list(APPEND outs ${out_dir}/${s}.cpp ${out_dir}/${s}.h)
    endforeach()
    add_custom_command(
      OUTPUT ${outs}
      COMMAND ${THRIFT_COMPILER} --gen cpp:no_skeleton,moveable_types -I ${CMAKE_CURRENT_SOURCE_DIR}
              -out ${out_dir} ${idl_abs}
      DEPENDS ${idl_abs}
      COMMENT "thrift: generating C++ for ${name}.thrift"
      VERBATIM)
    foreach(o IN LISTS outs)
      if(o MATCHES "\\.cpp$")
        list(APPEND sources ${o})
      endif()
    endforeach()
  endforeach()
  set(py_dir ${CMAKE_CURRENT_BINARY_DIR}/gen-py)
  set(py_stamps)
  foreach(idl IN LISTS ARG_IDL)
    get_filename_component(idl_abs ${idl} ABSOLUTE)
    get_filename_component(name ${idl} NAME_WE)
    set(stamp ${py_dir}/.${name}.stamp)
    add_custom_command(
      OUTPUT ${stamp}
      COMMAND ${CMAKE_COMMAND} -E make_directory ${py_dir}
      COMMAND ${THRIFT_COMPILER} --gen py -I ${CMAKE_CURRENT_SOURCE_DIR} -out ${py_dir} ${idl_abs}
      COMMAND ${CMAKE_COMMAND} -E touch ${stamp}
      DEPENDS ${idl_abs}
      COMMENT "thrift: generating Python for ${name}.thrift"
      VERBATIM)
    list(APPEND py_stamps ${stamp})
  endforeach()
  add_custom_target(${target}_py ALL DEPENDS ${py_stamps})
  add_library(${target} STATIC ${sources})
  target_include_directories(${target} SYSTEM PUBLIC ${out_dir})
  # Thrift's headers need Boost; its nonblocking server needs libthriftnb, linked before libevent.
  target_link_libraries(${target} PUBLIC PkgConfig::THRIFT_NB PkgConfig::THRIFT PkgConfig::LIBEVENT Boost::headers)
  # Generated code: not ours to warn about.
  target_compile_options(${target} PRIVATE -w)
endfunction()
