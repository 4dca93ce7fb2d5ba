// gRPC server reflection, v1 and v1alpha, answered from the descriptors of
// the registered services (and of the payload types the node knows).
import { toBinary, type DescFile, type DescMessage, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "@ravi-mesh/contract/grpc/reflection/v1/reflection_pb";
import * as v1alpha from "@ravi-mesh/contract/grpc/reflection/v1alpha/reflection_pb";

/** The oneof of a reflection request, identical in v1 and v1alpha. */
type RequestKind =
  | { case: "fileByFilename"; value: string }
  | { case: "fileContainingSymbol"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: "allExtensionNumbersOfType"; value: string }
  | { case: "listServices"; value: string }
  | { case: undefined; value?: undefined };

/** The oneof of a reflection response, identical in v1 and v1alpha. */
type ResponseKind =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

const NOT_FOUND = 5;
const INVALID_ARGUMENT = 3;

/** ReflectionIndex answers reflection queries from a set of services and files. */
export class ReflectionIndex {
  private readonly services: () => readonly DescService[];
  private readonly extraFiles: () => readonly DescFile[];

  constructor(services: () => readonly DescService[], extraFiles: () => readonly DescFile[]) {
    this.services = services;
    this.extraFiles = extraFiles;
  }

  private files(): Map<string, DescFile> {
    const files = new Map<string, DescFile>();
    const visit = (file: DescFile): void => {
      // DescFile.name drops ".proto"; reflection speaks in proto file names.
      if (files.has(file.proto.name)) {
        return;
      }
      files.set(file.proto.name, file);
      file.dependencies.forEach(visit);
    };
    this.services().forEach((s) => visit(s.file));
    this.extraFiles().forEach(visit);
    return files;
  }

  private symbolFile(symbol: string, files: Map<string, DescFile>): DescFile | undefined {
    const visitMessage = (m: DescMessage): boolean =>
      m.typeName === symbol ||
      m.fields.some((f) => `${m.typeName}.${f.name}` === symbol) ||
      m.nestedEnums.some((e) => e.typeName === symbol) ||
      m.nestedExtensions.some((x) => x.typeName === symbol) ||
      m.nestedMessages.some(visitMessage);
    for (const file of files.values()) {
      if (
        file.messages.some(visitMessage) ||
        file.enums.some((e) => e.typeName === symbol || e.values.some((v) => `${file.proto.package}.${v.name}` === symbol)) ||
        file.extensions.some((x) => x.typeName === symbol) ||
        file.services.some((s) => s.typeName === symbol || s.methods.some((m) => `${s.typeName}.${m.name}` === symbol))
      ) {
        return file;
      }
    }
    return undefined;
  }

  /** The file and all its transitive dependencies, the file first. */
  private withDependencies(file: DescFile): Uint8Array[] {
    const seen = new Set<string>();
    const out: Uint8Array[] = [];
    const visit = (f: DescFile): void => {
      if (seen.has(f.proto.name)) {
        return;
      }
      seen.add(f.proto.name);
      out.push(toBinary(FileDescriptorProtoSchema, f.proto));
      f.dependencies.forEach(visit);
    };
    visit(file);
    return out;
  }

  answer(request: RequestKind): ResponseKind {
    const files = this.files();
    const notFound = (what: string): ResponseKind => ({
      case: "errorResponse",
      value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` },
    });
    switch (request.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: { service: this.services().map((s) => ({ name: s.typeName })) },
        };
      case "fileByFilename": {
        const file = files.get(request.value);
        return file === undefined
          ? notFound(`file ${request.value}`)
          : { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.withDependencies(file) } };
      }
      case "fileContainingSymbol": {
        const file = this.symbolFile(request.value, files);
        return file === undefined
          ? notFound(`symbol ${request.value}`)
          : { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.withDependencies(file) } };
      }
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = request.value;
        for (const file of files.values()) {
          const all = [...file.extensions, ...file.messages.flatMap((m) => m.nestedExtensions)];
          if (all.some((x) => x.extendee.typeName === containingType && x.number === extensionNumber)) {
            return { case: "fileDescriptorResponse", value: { fileDescriptorProto: this.withDependencies(file) } };
          }
        }
        return notFound(`extension ${extensionNumber} of ${containingType}`);
      }
      case "allExtensionNumbersOfType": {
        const typeName = request.value;
        if (this.symbolFile(typeName, files) === undefined) {
          return notFound(`type ${typeName}`);
        }
        const numbers: number[] = [];
        for (const file of files.values()) {
          for (const x of [...file.extensions, ...file.messages.flatMap((m) => m.nestedExtensions)]) {
            if (x.extendee.typeName === typeName) {
              numbers.push(x.number);
            }
          }
        }
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: typeName, extensionNumber: numbers } };
      }
      default:
        return {
          case: "errorResponse",
          value: { errorCode: INVALID_ARGUMENT, errorMessage: "the request sets no message_request" },
        };
    }
  }
}

/** grpc.reflection.v1.ServerReflection over an index. */
export function reflectionV1(index: ReflectionIndex): ServiceImpl<typeof v1.ServerReflection> {
  return {
    async *serverReflectionInfo(requests): AsyncGenerator<MessageInitShape<typeof v1.ServerReflectionResponseSchema>> {
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: index.answer(request.messageRequest) };
      }
    },
  };
}

/** grpc.reflection.v1alpha.ServerReflection over an index. */
export function reflectionV1alpha(index: ReflectionIndex): ServiceImpl<typeof v1alpha.ServerReflection> {
  return {
    async *serverReflectionInfo(
      requests,
    ): AsyncGenerator<MessageInitShape<typeof v1alpha.ServerReflectionResponseSchema>> {
      for await (const request of requests) {
        yield { validHost: request.host, originalRequest: request, messageResponse: index.answer(request.messageRequest) };
      }
    },
  };
}
