# Builds and runs a small outside project that uses collx, either through
# find_package(collx) after `cmake --install` into a temporary prefix, or through
# add_subdirectory. Run with cmake -P; fails on the first step that fails.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})

function(run)
  execute_process(COMMAND ${ARGN} WORKING_DIRECTORY ${WORK} RESULT_VARIABLE rc
    OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

set(consumer ${CMAKE_CURRENT_LIST_DIR}/consumer)
if(MODE STREQUAL "find_package")
  # COLLX_CUDA=OFF: with nothing but the install to build, CUDA would only cost nvcc's
  # compiler checks (about 7 s); what is installed is the same with it or without.
  run(${CMAKE_COMMAND} -S ${COLLX_SOURCE} -B ${WORK}/collx-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX} -DCOLLX_BUILD_TESTS=OFF -DCOLLX_BUILD_EXAMPLES=OFF
      -DCOLLX_BUILD_BENCHMARKS=OFF -DCOLLX_BUILD_TOOLS=OFF -DCOLLX_BUILD_TORCH=OFF -DCOLLX_CUDA=OFF
      -DCMAKE_INSTALL_PREFIX=${WORK}/prefix)
  run(${CMAKE_COMMAND} --install ${WORK}/collx-build)
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK}/consumer-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCOLLX_VIA=find_package)
else()
  run(${CMAKE_COMMAND} -S ${consumer} -B ${WORK}/consumer-build -G ${GENERATOR}
      -DCMAKE_CXX_COMPILER=${CXX} -DCOLLX_VIA=add_subdirectory -DCOLLX_SOURCE=${COLLX_SOURCE})
endif()
run(${CMAKE_COMMAND} --build ${WORK}/consumer-build)
run(${WORK}/consumer-build/consumer)
if(NOT last_output MATCHES "consumer: all_reduce ok")
  message(FATAL_ERROR "the consumer ran but did not report success:\n${last_output}")
endif()
# The same package builds a program of processes; collx-run (this build's) starts 3.
if(COLLX_RUN)
  run(${COLLX_RUN} -n 3 --timeout 60 -- ${WORK}/consumer-build/consumer_processes)
  if(NOT last_output MATCHES "processes all_reduce ok \\(rank 2 of 3\\)")
    message(FATAL_ERROR "the process consumer did not report success:\n${last_output}")
  endif()
endif()
message(STATUS "${MODE}: ${last_output}")
