# Script behind ctest "install: find_package consumer" (see CMakeLists.txt).
# Inputs: BUILD_DIR, WORK_DIR, CONSUMER_DIR, GENERATOR, CXX_COMPILER.
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${name} failed (exit ${rc})\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(installed bin/moejit include/moejit/ir/builder.h include/moejit/passes/pass_manager.h)
  if(NOT EXISTS ${prefix}/${installed})
    message(FATAL_ERROR "install test: ${prefix}/${installed} was not installed")
  endif()
endforeach()

step("configure the consumer" ${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/consumer -G ${GENERATOR}
     -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
step("build the consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/consumer)
step("run the consumer" ${WORK_DIR}/consumer/app)

# What the consumer must print: its graph, with the dead exp gone.
foreach(expected
    "func.func @consumer(%x: tensor<2x3xf32>, %w: tensor<3x4xf32> {mj.role = \"param\"})"
    "\"mj.matmul\"(%x, %w)"
    "\"mj.relu\"(%0) : (tensor<2x4xf32>) -> tensor<2x4xf32>"
    "return %1 : tensor<2x4xf32>")
  string(FIND "${step_output}" "${expected}" found)
  if(found EQUAL -1)
    message(FATAL_ERROR "install test: the consumer's output lacks '${expected}':\n${step_output}")
  endif()
endforeach()
string(FIND "${step_output}" "mj.exp" found)
if(NOT found EQUAL -1)
  message(FATAL_ERROR "install test: dce did not run in the consumer:\n${step_output}")
endif()

step("run the installed moejit CLI" ${prefix}/bin/moejit --version)
if(NOT step_output MATCHES "^moejit [0-9]+\\.[0-9]+")
  message(FATAL_ERROR "install test: moejit --version printed '${step_output}'")
endif()
message(STATUS "install test: consumer built against ${prefix} and printed its graph")
