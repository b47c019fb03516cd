cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: string[]
outputs:
  out: {type: "File[]", outputSource: nap/out}
steps:
  nap:
    in: {word: words}
    scatter: word
    out: [out]
    run:
      class: CommandLineTool
      inputs: {word: string}
      baseCommand: [sh, -c, 'sleep 1; echo "$0"']
      arguments: [$(inputs.word)]
      stdout: word.txt
      outputs: {out: stdout}
