# Compiler warnings and sanitizers, applied to every modelcast target through
# modelcast_set_target_options().
add_library(modelcast_options INTERFACE)
target_compile_options(modelcast_options INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>)
if(MODELCAST_WERROR)
  target_compile_options(modelcast_options INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
endif()
if(MODELCAST_SANITIZE)
  # C++ only: nvcc takes no -fsanitize (device code is not instrumented).
  target_compile_options(modelcast_options INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${MODELCAST_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=undefined>)
  target_link_options(modelcast_options INTERFACE -fsanitize=${MODELCAST_SANITIZE})
endif()

if(MODELCAST_FUZZ)
  # Coverage instrumentation for every library the fuzz drivers link.
  target_compile_options(modelcast_options INTERFACE -fsanitize=fuzzer-no-link)
endif()

function(modelcast_set_target_options target)
  target_link_libraries(${target} PRIVATE modelcast_options)
endfunction()
